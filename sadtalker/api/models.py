"""Request and response bodies of /sadtalker/v1, for pydantic 1 (A1111: fastapi 0.94) and pydantic 2 (Forge).

The models are written in the subset both majors accept and use the pydantic that FastAPI itself uses: FastAPI
0.94 (A1111) needs pydantic 1 models; FastAPI 0.100+ under pydantic 2 (Forge) rejects `pydantic.v1` models as
bodies, so importing `pydantic.v1` first would break Forge. The options model is generated from
`option_specs()`: the schema shows each option's type, default and range, and `GenerateOptions.from_dict` stays
the one place that validates them.
"""

from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional, Union

import pydantic
from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr, confloat, conint, create_model

from ..options import MAX_FREE_VIEW_KEYFRAMES, OptionSpec, option_specs

PYDANTIC_MAJOR = int(pydantic.VERSION.split(".")[0])

MAX_ITEMS = 256  # items per job
MAX_NAME = 120
MAX_PATH = 4096
# A base64 field is bounded by the request-size limit (configurable); this bound only stops absurd single fields.
MAX_BASE64 = 2**31


def _list_bounds(low: int | None, high: int | None) -> dict[str, int]:
    if PYDANTIC_MAJOR >= 2:
        return {k: v for k, v in (("min_length", low), ("max_length", high)) if v is not None}
    return {k: v for k, v in (("min_items", low), ("max_items", high)) if v is not None}


if PYDANTIC_MAJOR >= 2:
    from pydantic import ConfigDict

    class ApiModel(BaseModel):
        model_config = ConfigDict(extra="forbid")

        def given(self) -> dict[str, Any]:
            """The fields the client sent (not the defaults)."""
            return self.model_dump(exclude_unset=True)
else:
    class ApiModel(BaseModel):  # type: ignore[no-redef]
        class Config:
            extra = "forbid"

        def given(self) -> dict[str, Any]:
            return self.dict(exclude_unset=True)


def _schema_extra(**values: Any) -> dict[str, Any]:
    """Field keywords that show `values` in the OpenAPI schema without pydantic enforcing them."""
    values = {k: v for k, v in values.items() if v is not None}
    if not values:
        return {}
    return {"json_schema_extra": values} if PYDANTIC_MAJOR >= 2 else values


def _option_field(spec: OptionSpec) -> tuple[Any, Any]:
    """(type, Field) of one option in the request schema. Types are strict (no "3" -> 3, no 1.5 -> 1); ranges and
    choices are shown in the schema but checked by `GenerateOptions.from_dict`, so that a value out of range gets
    the code and message it gets from the command line and the UI (invalid_input, "pose_style must be ...")."""
    text = spec.help + (f" (one of: {spec.range_text})" if spec.choices else "")
    low, high = spec.minimum, spec.maximum
    if spec.kind == "choice":
        # the enhancer also takes the host's restorers ("host:CodeFormer" in the WebUI)
        kind: Any = StrictStr if all(isinstance(c, str) for c in spec.choices) else StrictInt
        enum = None if spec.name == "enhancer" else list(spec.choices)
        return Optional[kind], Field(None, description=text, **_schema_extra(enum=enum))
    if spec.kind == "bool":
        return Optional[StrictBool], Field(None, description=text)
    if spec.kind in ("int", "seed"):
        return Optional[StrictInt], Field(None, description=text, **_schema_extra(minimum=low, maximum=high))
    if spec.kind == "float":
        return Optional[float], Field(None, description=text, **_schema_extra(minimum=low, maximum=high))
    if spec.kind == "angles":
        return Optional[List[float]], Field(None, description=text + f" (degrees, {spec.range_text})",
                                            **_list_bounds(None, MAX_FREE_VIEW_KEYFRAMES))
    if spec.kind == "box":
        return Optional[List[StrictInt]], Field(None, description=text, **_list_bounds(4, 4))
    if spec.kind == "video":
        return Optional[StrictStr], Field(None, max_length=MAX_PATH,
                                          description=text + ": a server-side file path (only where the server "
                                                             "allows paths, under its allowed folders)")
    raise AssertionError(f"no API form for option kind {spec.kind!r}")  # pragma: no cover


# Named and placed apart from the WebUI's own `create_model("Options")` (modules/api/models.py): two dynamic
# models with the same name and module make FastAPI's OpenAPI document fail with a KeyError.
OptionsModel = create_model(  # type: ignore[call-overload]
    "SadTalkerOptions", __base__=ApiModel, __module__=__name__, **{spec.name: _option_field(spec) for spec in option_specs()})
OptionsModel.__doc__ = ("Generation options by field name; every one is optional (its default applies). "
                        "GET /sadtalker/v1/options describes each.")


def _media(kind: str) -> Any:
    return Field(None, max_length=MAX_BASE64, description=f"the {kind} as base64, or a data: URL")


def _path(kind: str) -> Any:
    return Field(None, max_length=MAX_PATH,
                 description=f"the {kind} as a server-side file path (only where the server allows paths, under "
                             f"its allowed folders); instead of `{kind}`")


class Item(ApiModel):
    """One photo + one speech clip. Either the data itself (base64) or, where allowed, a server-side path."""

    image: Optional[StrictStr] = _media("image")
    image_path: Optional[StrictStr] = _path("image")
    audio: Optional[StrictStr] = _media("audio")
    audio_path: Optional[StrictStr] = _path("audio")
    name: Optional[StrictStr] = Field(None, min_length=1, max_length=MAX_NAME,
                                      description="output file name (without .mp4); default: from the inputs")
    options: Optional[OptionsModel] = Field(None, description="this item's options, over the job's")  # type: ignore


class GenerateRequest(Item):
    """POST /generate: one video, answered when it is done."""

    save: StrictBool = Field(True, description="keep the video in the outputs folder (its path is returned)")
    send_video: StrictBool = Field(True, description="return the video as base64 in the answer")


class JobRequest(ApiModel):
    """POST /jobs: a batch. Job-level `image`/`audio` serve every item that lacks its own (one speech for many
    photos, or many speeches for one photo); job-level `options` apply to every item under its own."""

    items: List[Item] = Field(..., description="the videos to make, in order", **_list_bounds(1, MAX_ITEMS))
    image: Optional[StrictStr] = _media("image")
    image_path: Optional[StrictStr] = _path("image")
    audio: Optional[StrictStr] = _media("audio")
    audio_path: Optional[StrictStr] = _path("audio")
    options: Optional[OptionsModel] = Field(None, description="options for every item")  # type: ignore


class ErrorInfo(ApiModel):
    code: str = Field(..., description="stable error code, e.g. no_face, bad_audio, invalid_input")
    message: str
    option: Optional[str] = Field(None, description="the option or field at fault, when there is one")


class ErrorResponse(ApiModel):
    error: ErrorInfo


class GenerateResponse(ApiModel):
    video: Optional[str] = Field(None, description="the MP4 as base64 (when send_video)")
    path: Optional[str] = Field(None, description="where it was saved (when save)")
    seed: int
    frames: int
    fps: int
    options: Dict[str, Any] = Field(..., description="every option as used")
    warnings: List[str] = []
    seconds: Dict[str, float] = Field({}, description="wall time per stage")


JobState = str  # "queued" | "running" | "done" | "failed" | "cancelled"


class ItemStatus(ApiModel):
    index: int
    name: str
    state: JobState
    stage: Optional[str] = Field(None, description="while running: load, face, audio, motion, render, encode")
    progress: float = Field(0.0, description="0..1 within this item")
    error: Optional[ErrorInfo] = None
    video_url: Optional[str] = Field(None, description="GET this for the MP4 (done items)")
    path: Optional[str] = None
    seed: Optional[int] = None
    frames: Optional[int] = None
    runs: int = Field(0, description="how many times the item was started")
    note: Optional[str] = Field(None, description="e.g. that it re-ran from the start after a server restart")
    options: Dict[str, Any] = {}


class JobStatus(ApiModel):
    id: str
    state: JobState
    created: float = Field(..., description="seconds since the epoch")
    finished: Optional[float] = None
    counts: Dict[str, int] = Field(..., description="items per state")
    progress: float = Field(..., description="0..1 over all items")
    eta_seconds: Optional[float] = Field(None, description="estimated seconds left (after the first item)")
    items: List[ItemStatus]


class JobSummary(ApiModel):
    id: str
    state: JobState
    created: float
    finished: Optional[float] = None
    counts: Dict[str, int]


class JobList(ApiModel):
    jobs: List[JobSummary]


class JobCreated(ApiModel):
    id: str
    state: JobState
    items: int
    url: str


class OptionDescription(ApiModel):
    name: str
    flag: str
    label: str
    help: str
    kind: str
    default: Any = None
    choices: List[Union[StrictInt, StrictStr]] = []
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    advanced: bool = True


class OptionsDescription(ApiModel):
    options: List[OptionDescription]
    enhancers: List[str] = Field(..., description="every enhancer this host offers (ours, then the host's)")


class ModelFile(ApiModel):
    name: str
    state: str = Field(..., description="ok | missing | corrupt")
    required_for: List[str]
    detail: str


class ModelsStatus(ApiModel):
    ready: Dict[str, bool] = Field(..., description="per face size (256, 512): every file it needs is present and "
                                                     "loads strictly")
    files: List[ModelFile]


class VersionInfo(ApiModel):
    version: str
    api: str
    host: str
    pydantic: str
    device: str


def option_descriptions() -> List[Dict[str, Any]]:
    return [spec.describe() for spec in option_specs()]


__all__ = ["ApiModel", "ErrorInfo", "ErrorResponse", "GenerateRequest", "GenerateResponse", "Item", "ItemStatus",
           "JobCreated", "JobList", "JobRequest", "JobStatus", "JobSummary", "ModelFile", "ModelsStatus",
           "OptionsDescription", "OptionsModel", "PYDANTIC_MAJOR", "VersionInfo", "option_descriptions"]
