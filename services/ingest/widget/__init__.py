"""The web-chat widget: the script a site embeds and the chat page it opens."""
