"""The library every omniroute service imports: settings, events, bus, database, outbox."""
