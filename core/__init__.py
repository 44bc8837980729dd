"""lorabot's platform-free chat core: settings, models registry, engine, scheduler, history.

Nothing in here imports discord or telegram; adapters in `bots/` call `ChatService`.
"""
