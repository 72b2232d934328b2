"""Every weight file the tool can use: its name, where it comes from, and which components it holds."""

from __future__ import annotations

from dataclasses import dataclass, field

RELEASE = "https://github.com/OpenTalker/SadTalker/releases/download/v0.0.2-rc/"
HF_MIRROR = "https://huggingface.co/vinthony/SadTalker/resolve/main/"
FACEXLIB = "https://github.com/xinntao/facexlib/releases/download/"


@dataclass(frozen=True)
class WeightFile:
    """One downloadable file. `size` is the byte count when known (None: verified by loading it strictly)."""

    name: str
    urls: tuple[str, ...]
    components: tuple[str, ...]
    purpose: str
    size: int | None = None
    sha256: str | None = None
    group: str = "sadtalker"
    required_for: tuple[str, ...] = field(default_factory=tuple)


SADTALKER_COMPONENTS = ("kp_extractor", "generator", "audio2exp", "audio2pose", "face_3drecon")


def _sadtalker(name: str, purpose: str, **kw) -> WeightFile:
    return WeightFile(name, (RELEASE + name, HF_MIRROR + name), purpose=purpose, **kw)


SADTALKER_256 = _sadtalker("SadTalker_V0.0.2_256.safetensors", "all SadTalker networks, 256 px renderer",
                           components=SADTALKER_COMPONENTS, required_for=("256",))
SADTALKER_512 = _sadtalker("SadTalker_V0.0.2_512.safetensors", "all SadTalker networks, 512 px renderer",
                           components=SADTALKER_COMPONENTS, required_for=("512",))
MAPPING_CROP = _sadtalker("mapping_00229-model.pth.tar", "mapping net for crop / extcrop / resize",
                          components=("mapping70",), required_for=("crop", "extcrop", "resize"))
MAPPING_FULL = _sadtalker("mapping_00109-model.pth.tar", "mapping net for full / extfull",
                          components=("mapping73",), required_for=("full", "extfull"))

SADTALKER_FILES = (SADTALKER_256, SADTALKER_512, MAPPING_CROP, MAPPING_FULL)

FACEXLIB_DETECTION = WeightFile("detection_Resnet50_Final.pth", (FACEXLIB + "v0.1.0/detection_Resnet50_Final.pth",),
                                components=(), purpose="facexlib RetinaFace face detector", group="facexlib")
FACEXLIB_ALIGNMENT = WeightFile("alignment_WFLW_4HG.pth", (FACEXLIB + "v0.1.0/alignment_WFLW_4HG.pth",),
                                components=(), purpose="facexlib 98-point landmark network", group="facexlib")
GFPGAN_V14 = WeightFile("GFPGANv1.4.pth", ("https://github.com/TencentARC/GFPGAN/releases/download/v1.3.0/GFPGANv1.4.pth",),
                        components=(), purpose="GFPGAN v1.4 face enhancer", group="enhancer")

RESTOREFORMER = WeightFile("RestoreFormer.pth",
                           ("https://github.com/TencentARC/GFPGAN/releases/download/v1.3.4/RestoreFormer.pth",),
                           components=(), purpose="RestoreFormer face enhancer", group="enhancer")
CODEFORMER = WeightFile("codeformer.pth", ("https://github.com/sczhou/CodeFormer/releases/download/v0.1.0/codeformer.pth",),
                        components=(), purpose="CodeFormer face enhancer", group="enhancer")
ENHANCER_FILES = {"gfpgan": GFPGAN_V14, "restoreformer": RESTOREFORMER, "codeformer": CODEFORMER}

ALL_FILES = SADTALKER_FILES + (FACEXLIB_DETECTION, FACEXLIB_ALIGNMENT) + tuple(ENHANCER_FILES.values())


def by_name(name: str) -> WeightFile:
    for item in ALL_FILES:
        if item.name == name:
            return item
    raise KeyError(name)


def sadtalker_file(size: int) -> WeightFile:
    return {256: SADTALKER_256, 512: SADTALKER_512}[size]


def mapping_file(preprocess: str) -> WeightFile:
    """The mapping net depends on the preprocess family, not on still mode (official `init_path`)."""
    return MAPPING_FULL if "full" in preprocess else MAPPING_CROP


def enhancer_file(name: str) -> WeightFile:
    return ENHANCER_FILES[name]


def first_run_files(sizes=(256,), detector: str = "facexlib", enhancer: str = "none") -> list[WeightFile]:
    """What a first run needs (the installer's and the UI's default download): the renderer(s), both mapping
    nets, and the weights of the chosen face detector and enhancer (dlib and face-alignment bring their own)."""
    wanted = [sadtalker_file(size) for size in sorted(set(sizes))] + [MAPPING_CROP, MAPPING_FULL]
    if detector == "facexlib":
        wanted += [FACEXLIB_DETECTION, FACEXLIB_ALIGNMENT]
    if enhancer in ENHANCER_FILES:
        wanted.append(ENHANCER_FILES[enhancer])
    return wanted
