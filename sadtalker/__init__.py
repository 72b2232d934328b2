"""SadTalker, re-implemented: one portrait + speech -> a talking-head video.

The package never imports the Stable Diffusion WebUI; `scripts/` adapts it to the WebUI.
"""

__version__ = "0.1.0"
