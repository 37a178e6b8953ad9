"""Test harnesses beside the product: a fake Flickr, the local cloud (emulators and functions-framework
servers) and the end-to-end scenario on it.

Tests, benchmarks and the ``mountainid fake-flickr``, ``local-cloud`` and ``--fake-flickr`` commands use
them; nothing the deployed functions and images ship imports them, and those do not copy this package.
"""
