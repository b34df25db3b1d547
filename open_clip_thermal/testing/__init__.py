"""Test and offline-smoke tooling, not product code.

Nothing in here is part of the supported API of ``open_clip_thermal``; these helpers exist so the
test suite, the rehearsal and offline smoke runs can exercise the product without the network.

* :mod:`open_clip_thermal.testing.mock_vlm` -- ``MockChatServer``, a deterministic loopback
  OpenAI-compatible chat-completions server with fault injection, standing in for a VLM.
"""
