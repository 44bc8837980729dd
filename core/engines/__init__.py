"""Engines turn a chat (list of messages) into a stream of text. See `base.Engine`."""
