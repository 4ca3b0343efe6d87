"""Headless OpenGL for MuJoCo rendering.

MuJoCo picks its OpenGL backend from the MUJOCO_GL environment variable when `mujoco` is first
imported, and PyOpenGL fixes its platform (PYOPENGL_PLATFORM) on first import; neither can be
switched later in the same process. So `configure()` must run before anything imports mujoco:
every module of this package that needs mujoco calls it first.

Choice: a value the user set wins. Otherwise, with a display, MuJoCo's default (GLFW) is kept;
without one, EGL is tried, then OSMesa, each in a throw-away subprocess (a broken GL driver may
crash rather than raise). The choice is written to os.environ so that worker processes inherit it
without probing again.
"""

from __future__ import annotations

import os
import subprocess
import sys

HEADLESS_BACKENDS = ("egl", "osmesa")

# Creates a context, a MuJoCo render context and renders one frame: what the simulator needs.
_PROBE = """
import mujoco
model = mujoco.MjModel.from_xml_string('<mujoco><worldbody><geom size="1"/></worldbody></mujoco>')
context = mujoco.GLContext(16, 16)
context.make_current()
render_context = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_100)
mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, render_context)
"""


class HeadlessGLError(RuntimeError):
    """No OpenGL backend could be set up for off-screen rendering."""


def _has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def probe(backend: str, timeout: float = 120.0) -> str | None:
    """Try `backend` in a subprocess; None if it works, else the reason it failed."""
    env = dict(os.environ, MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend)
    try:
        result = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                                text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s"
    if result.returncode == 0:
        return None
    lines = (result.stderr or result.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit status {result.returncode}"


def configure() -> str:
    """Choose the OpenGL backend before mujoco is imported; returns it ('' = MuJoCo's default).

    Also makes Mesa's software rasterizer single-threaded unless the user chose otherwise: at
    the small image sizes used here its thread hand-offs cost more than they save (measured
    16 -> 12 ms for three 64 px renders), and demo generation runs one process per core.
    """
    os.environ.setdefault("LP_NUM_THREADS", "1")
    chosen = os.environ.get("MUJOCO_GL")
    if chosen is not None:
        return chosen
    if not sys.platform.startswith("linux") or _has_display():
        return ""
    failures = []
    for backend in HEADLESS_BACKENDS:
        reason = probe(backend)
        if reason is None:
            os.environ["MUJOCO_GL"] = backend
            os.environ.setdefault("PYOPENGL_PLATFORM", backend)
            return backend
        failures.append(f"  {backend}: {reason}")
    raise HeadlessGLError(
        "no display and no working headless OpenGL backend for MuJoCo:\n" + "\n".join(failures)
        + "\nInstall EGL (Debian: libegl1 libgl1-mesa-dri) or OSMesa (Debian: libosmesa6), or "
        "set MUJOCO_GL to a backend that works here.")


def gl_context(width: int, height: int):
    """An OpenGL context for the backend in MUJOCO_GL, with a clear error when it fails.

    The backend class is chosen here rather than through `mujoco.GLContext`, which was bound
    when mujoco was imported - possibly before `configure()` ran, if the user imported it first.
    """
    backend = os.environ.get("MUJOCO_GL", "").lower()
    try:
        if backend == "egl":
            from mujoco.egl import GLContext
        elif backend == "osmesa":
            from mujoco.osmesa import GLContext
        else:
            from mujoco import GLContext
        context = GLContext(width, height)
        context.make_current()
    except Exception as error:  # the backends raise ImportError, RuntimeError, GLError...
        raise HeadlessGLError(
            f"cannot create an OpenGL context with MUJOCO_GL={backend or '(unset)'}: {error}. "
            "Unset MUJOCO_GL to let lingvla pick EGL or OSMesa, or install one of them "
            "(Debian: libegl1 libgl1-mesa-dri, or libosmesa6).") from error
    return context
