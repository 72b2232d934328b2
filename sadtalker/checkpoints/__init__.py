"""The weight files: which exist, where they come from, how to read them safely, and how to build each network.

Submodules are imported where used so that `install.py` can use the downloader without importing torch.
"""
