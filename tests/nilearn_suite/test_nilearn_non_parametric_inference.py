"""nilearn 0.14's ``nilearn/glm/tests/test_non_parametric_inference.py``, run against daskglm
(see nilearn_redirect.py)."""

from nilearn_suite.nilearn_redirect import load_nilearn_tests

globals().update(load_nilearn_tests("test_non_parametric_inference"))
