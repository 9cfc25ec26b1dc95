"""Data types shared by the models and the evaluation (the layer both import; it imports neither)."""
