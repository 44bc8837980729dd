"""A fake Hugging Face Hub on loopback, for testing the real huggingface_hub / datasets /
transformers clients."""

from fake_hub.server import FakeHub, HubFile, HubRepo

__all__ = ["FakeHub", "HubFile", "HubRepo"]
