"""The Gradio UI: the tabs and their Gradio-free logic."""
