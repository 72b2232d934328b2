"""Command-line flags the WebUI accepts for this extension (it calls `preload(parser)` before parsing them)."""


def preload(parser):
    parser.add_argument("--sadtalker-models-path", type=str, default=None,
                        help="SadTalker models folder (default: <models>/SadTalker; the Settings field overrides it)")
    parser.add_argument("--sadtalker-no-download", action="store_true", default=False,
                        help="SadTalker: never download missing model files (install.py lists what is missing)")
