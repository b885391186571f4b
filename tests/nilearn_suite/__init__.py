"""nilearn 0.14's own GLM test suite, run against daskglm (see nilearn_redirect.py and conftest.py)."""
