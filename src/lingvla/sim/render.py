"""Off-screen rendering of a few named cameras, fast on a CPU.

What makes it fast (measured on the 2-core CPU machine with Mesa's llvmpipe, three cameras):
shadows and reflections off (~120 -> ~30 ms per step), no multisampling (~30 -> ~15 ms), only
the cameras asked for, and one scene update per step shared by the cameras. The cost is per
render call (vertex work on the arm meshes), barely per pixel, so image size hardly matters.
"""

from __future__ import annotations

import atexit
import weakref

from . import gl

gl.configure()

import mujoco  # noqa: E402  (after gl.configure, which must see mujoco unimported)
import numpy as np  # noqa: E402

# Renderers still open at exit are closed before the GL library's own exit handlers tear the
# display down (registered after the first context exists, so it runs before them).
_open_renderers: weakref.WeakSet = weakref.WeakSet()
_exit_hook_registered = False


def _close_all() -> None:
    for renderer in list(_open_renderers):
        renderer.close()


class CameraRenderer:
    """Renders RGB (and optionally depth in metres) from named cameras of one model.

    `render(data, images, depths)` writes into caller-owned arrays, so a recorder can hand in
    slices of its episode buffers and no frame is copied after the GL read-back.
    """

    def __init__(self, model: mujoco.MjModel, cameras: tuple[str, ...], height: int, width: int,
                 *, depth: bool = False, antialias: bool = False):
        self._gl = self._context = None  # for close() if construction fails part-way
        self.cameras = tuple(cameras)
        self.height, self.width = height, width
        self.depth = depth
        self._model = model
        # The off-screen framebuffer is sized from the model at context creation.
        model.vis.global_.offwidth = max(width, 1)
        model.vis.global_.offheight = max(height, 1)
        model.vis.quality.offsamples = 4 if antialias else 0

        self._cameras = []
        for name in self.cameras:
            camera_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, name)
            if camera_id < 0:
                names = [model.camera(i).name for i in range(model.ncam)]
                raise ValueError(f"unknown camera {name!r}; the model has {names}")
            camera = mujoco.MjvCamera()
            camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
            camera.fixedcamid = camera_id
            self._cameras.append(camera)

        self._gl = gl.gl_context(width, height)
        global _exit_hook_registered
        if not _exit_hook_registered:
            atexit.register(_close_all)
            _exit_hook_registered = True
        _open_renderers.add(self)
        self._context = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_100)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._context)
        # Depth buffer read-back maps the far plane to 0 and the near plane to 1.
        self._context.readDepthMap = mujoco.mjtDepthMap.mjDEPTH_ZEROFAR
        self._scene = mujoco.MjvScene(model, maxgeom=2000)
        self._scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
        self._scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        self._option = mujoco.MjvOption()
        self._rect = mujoco.MjrRect(0, 0, width, height)
        # GL rows run bottom-up; reads land here and are flipped once into the caller's array.
        self._rgb = np.empty((height, width, 3), np.uint8)
        self._zbuffer = np.empty((height, width), np.float32) if depth else None
        extent = model.stat.extent
        self._near = np.float32(model.vis.map.znear * extent)
        self._far = np.float32(model.vis.map.zfar * extent)

    def render(self, data: mujoco.MjData, images: dict[str, np.ndarray],
               depths: dict[str, np.ndarray] | None = None) -> None:
        """Render every camera into images[cam] (uint8 HxWx3) and depths[cam] (float32 HxW)."""
        if self._context is None:
            raise RuntimeError("render called after close")
        if depths is not None and not self.depth:
            raise ValueError("depth requested from a renderer built with depth=False")
        self._gl.make_current()
        # Geometry once per step; then only the viewpoint changes between cameras.
        mujoco.mjv_updateScene(self._model, data, self._option, None, self._cameras[0],
                               mujoco.mjtCatBit.mjCAT_ALL, self._scene)
        for index, (name, camera) in enumerate(zip(self.cameras, self._cameras)):
            if index:
                mujoco.mjv_updateCamera(self._model, data, camera, self._scene)
            mujoco.mjr_render(self._rect, self._scene, self._context)
            want_depth = depths is not None
            mujoco.mjr_readPixels(self._rgb, self._zbuffer if want_depth else None, self._rect,
                                  self._context)
            np.copyto(images[name], self._rgb[::-1])
            if want_depth:
                self._linear_depth(self._zbuffer[::-1], depths[name])

    def _linear_depth(self, zbuffer: np.ndarray, out: np.ndarray) -> None:
        # Invert the perspective depth mapping (far -> 0, near -> 1) to distance along the
        # camera axis in metres: z = near * far / (near + d * (far - near)).
        np.multiply(zbuffer, self._far - self._near, out=out)
        out += self._near
        np.divide(self._near * self._far, out, out=out)

    def close(self) -> None:
        # GL objects are freed in whichever context is current: make it ours first, or the
        # framebuffer of another live renderer goes instead.
        if self._gl is not None:
            self._gl.make_current()
            if self._context is not None:
                self._context.free()
            self._gl.free()
        self._context = None
        self._gl = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown may have torn down the GL bindings already
            pass
