"""The few places where gradio 3.41 (AUTOMATIC1111 1.10) and gradio 4.x (Forge, the standalone app) differ.

Everything else in the UI uses the API both share: components, `gr.update`, `.click/.change/.then`, `gr.Progress`,
`gr.Error`/`gr.Warning`. Nothing here imports the WebUI.
"""

from __future__ import annotations

import os
from typing import Any

import gradio as gr

GRADIO_MAJOR = int(gr.__version__.split(".")[0])


def speech_inputs(elem_id: str) -> list[gr.Audio]:
    """Speech from a file or the microphone. gradio 4 offers both in one component; gradio 3 needs one each."""
    if GRADIO_MAJOR >= 4:
        return [gr.Audio(sources=["upload", "microphone"], type="filepath", label="Speech", elem_id=elem_id)]
    with gr.Tabs():
        with gr.Tab("Upload"):
            upload = gr.Audio(source="upload", type="filepath", label="Speech", elem_id=elem_id)
        with gr.Tab("Record"):
            record = gr.Audio(source="microphone", type="filepath", label="Speech (microphone)",
                              elem_id=elem_id + "_microphone")
    return [upload, record]


def file_path(value: Any) -> str | None:
    """A File/Video/Audio value as a path on this machine: gradio 3 hands a temp-file object (`.name`) or a path;
    gradio 4 a path or a FileData-like dict."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)):
        return file_path(value[0]) if value else None
    if isinstance(value, dict):
        return value.get("path") or value.get("name")
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    return getattr(value, "name", None)


def js_first(function: str | None) -> dict[str, str]:
    """Event keywords that run a JavaScript function (by name) in the browser before the Python one; its return
    value replaces the event's inputs. gradio 3 calls the keyword `_js`, gradio 4 `js`."""
    if not function:
        return {}
    return {"js" if GRADIO_MAJOR >= 4 else "_js": function}


def enable_queue(blocks: gr.Blocks, concurrency: int) -> gr.Blocks:
    """Queue so progress works and so Cancel and the downloader answer while a video renders."""
    if GRADIO_MAJOR >= 4:
        return blocks.queue(default_concurrency_limit=concurrency)
    return blocks.queue(concurrency_count=concurrency)
