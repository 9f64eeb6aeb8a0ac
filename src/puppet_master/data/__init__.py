"""Data: animated assets → Blender renders → curation → drags → training samples (paper §4, docs/design.md §6).

Modules: :mod:`.sources` (procedural / folder / Objaverse), :mod:`.blender` (code run inside
Blender's Python: procedural generator, renderer), :mod:`.blender_env` (that interpreter),
:mod:`.renders` (reading a render folder), :mod:`.motion` and :mod:`.curation`,
:mod:`.drag_sampling`, :mod:`.dataset`, :mod:`.build` (the resumable pipeline).
"""
