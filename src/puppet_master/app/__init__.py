"""The interactive Gradio demo (``puppet-master demo``)."""
