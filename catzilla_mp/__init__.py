"""catzilla_mp: run CPU-heavy Python work in worker processes over shared memory."""
