"""Code that runs inside a Blender Python (bpy); see :mod:`puppet_master.data.blender_env`."""
