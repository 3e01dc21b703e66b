// omniroute web-chat widget loader. Embed with one tag:
//   <script src="https://<ingest>/widget.js" data-workspace="<slug>" async></script>
// Optional: data-title="Chat with us", data-open="true" (open at once).
// It adds a launcher button and, when opened, an iframe with the chat page served by
// the same ingest, which talks to ingest on its own origin.
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script || !script.dataset.workspace) {
    if (window.console) window.console.error("omniroute widget: data-workspace is missing");
    return;
  }
  var base = new URL(script.src, location.href).origin;
  var title = script.dataset.title || "Chat with us";
  var src = base + "/widget/chat?workspace=" + encodeURIComponent(script.dataset.workspace);
  var frame = null;

  var button = document.createElement("button");
  button.type = "button";
  button.textContent = title;
  button.setAttribute("data-omniroute", "launcher");
  button.setAttribute("aria-expanded", "false");
  Object.assign(button.style, {
    position: "fixed", right: "20px", bottom: "20px", zIndex: "2147483000",
    padding: "12px 18px", border: "0", borderRadius: "999px", cursor: "pointer",
    background: "#3456d1", color: "#fff", font: "600 15px system-ui, sans-serif",
    boxShadow: "0 6px 20px rgba(0,0,0,.2)",
  });

  function open(show) {
    if (!frame) {
      frame = document.createElement("iframe");
      frame.src = src;
      frame.title = title;
      frame.setAttribute("data-omniroute", "chat");
      Object.assign(frame.style, {
        position: "fixed", right: "20px", bottom: "76px", zIndex: "2147483000",
        width: "min(370px, calc(100vw - 40px))", height: "min(540px, calc(100vh - 110px))",
        border: "0", borderRadius: "14px", background: "#fff",
        boxShadow: "0 12px 40px rgba(0,0,0,.25)",
      });
      document.body.appendChild(frame);
    }
    frame.style.display = show ? "block" : "none";
    button.setAttribute("aria-expanded", show ? "true" : "false");
  }

  button.addEventListener("click", function () {
    open(!frame || frame.style.display === "none");
  });

  function mount() {
    document.body.appendChild(button);
    if (script.dataset.open === "true") open(true);
  }
  if (document.body) mount();
  else document.addEventListener("DOMContentLoaded", mount);
})();
