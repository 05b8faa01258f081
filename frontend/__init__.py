"""Frontend: Qwen3 model directories in, traced op graphs out."""
