"""The console script ``distill-serve-teacher`` and its old import path; the server is :mod:`distill.serve`."""

from distill.serve import App, BadRequest, Scorer, ServeLimits, load_scorer, main, serve

__all__ = ["App", "BadRequest", "Scorer", "ServeLimits", "load_scorer", "main", "serve"]

if __name__ == "__main__":
    main()
