"""The ALOHA simulator (gym-aloha's bimanual tasks on MuJoCo) and scripted demonstrations.

    lingvla.sim.env             make_env(task, image_size=..., cameras=...), obs_to_numpy
    lingvla.sim.demonstrations  generate_demo, generate_dataset (-> LeRobot v3.0), iter_demos
    lingvla.sim.scripted        the waypoint policies behind the demonstrations
    lingvla.sim.evaluate        closed-loop evaluation of a checkpoint (`lingvla eval-sim`)
    lingvla.sim.demo            the whole pipeline in one command (`lingvla demo`)
    lingvla.sim.seeds           demonstration and evaluation seed ranges (they never overlap)
    lingvla.sim.tasks           task facts: prompts, cameras, joint names, initial-pose ranges
    lingvla.sim.gl              headless OpenGL choice (EGL, then OSMesa), made before mujoco loads

Nothing is imported here: mujoco must not load before lingvla.sim.gl has chosen a backend.
"""
