"""Serving a robot: the inference object (policy), the websocket policy server (server, protocol),
the client-side action broker (broker) and real-time chunking (rtc). See docs/serve.md."""
