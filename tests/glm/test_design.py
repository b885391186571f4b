"""daskglm.glm.design against nilearn 0.14 as the oracle (run inside each test)."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nilearn.glm._utils import pad_contrast as nl_pad_contrast
from nilearn.glm.contrasts import expression_to_contrast_vector
from nilearn.glm.first_level import FirstLevelModel

from daskglm.glm.design import (
    contrasts_per_run,
    frame_times,
    nonnull_runs,
    parse_contrast,
    run_design_matrices,
)

T_R = 2.0
EVENTS = pd.DataFrame(
    {"onset": [4.0, 18.0, 33.0, 50.0, 61.0], "duration": [2.0, 2.0, 1.0, 3.0, 2.0], "trial_type": list("ababa")}
)
EVENTS2 = pd.DataFrame({"onset": [6.0, 30.0, 44.0], "duration": [1.0, 1.0, 4.0], "trial_type": ["b", "a", "b"]})
_NOISE = ("Generation of a mask", "deprecat")  # nilearn chatter unrelated to designs


def _img(n_scans: int, seed: int) -> nib.Nifti1Image:
    data = np.random.default_rng(seed).normal(100.0, 1.0, (5, 5, 5, n_scans)).astype(np.float32)
    return nib.Nifti1Image(data, np.eye(4))


IMG40, IMG30 = _img(40, 0), _img(30, 1)
MASK = nib.Nifti1Image(np.ones((5, 5, 5), np.uint8), np.eye(4))


def _capture(fn):
    """(result or exception, [(category, message)]) of fn(), nilearn's unrelated warnings dropped."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        try:
            out = fn()
        except Exception as exc:  # noqa: BLE001 - the oracle may raise anything
            out = exc
    msgs = []
    for w in rec:
        text = str(w.message)
        if issubclass(w.category, (DeprecationWarning, FutureWarning)) or any(s in text for s in _NOISE):
            continue
        if (w.category, text) not in msgs:
            msgs.append((w.category, text))
    return out, msgs


def _model(**kw) -> FirstLevelModel:
    return FirstLevelModel(mask_img=MASK, noise_model="ols", minimize_memory=True, **kw)


def _nilearn_designs(imgs, model_kw=None, **fit_kw):
    return _capture(lambda: _model(**(model_kw or {})).fit(imgs, **fit_kw).design_matrices_)


def _ours(n_scans, model_kw=None, **fit_kw):
    kw = dict(model_kw or {})
    t_r = kw.pop("t_r", None)
    return _capture(lambda: run_design_matrices(n_scans, t_r, **kw, **fit_kw))


def _assert_same_designs(ours, theirs):
    assert not isinstance(theirs, Exception), theirs
    assert not isinstance(ours, Exception), ours
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        pd.testing.assert_frame_equal(a, b, check_exact=True)


# --------------------------------------------------------------------------- designs equal nilearn's


@pytest.mark.parametrize(
    "model_kw",
    [
        {"t_r": T_R},
        {"t_r": T_R, "hrf_model": "spm", "drift_model": "polynomial", "drift_order": 3, "slice_time_ref": 0.5},
        {"t_r": 1.5, "hrf_model": "fir", "fir_delays": [0, 1, 2], "high_pass": 0.02},
        {"t_r": T_R, "hrf_model": "glover + derivative", "drift_model": None, "slice_time_ref": 1.0, "min_onset": -5},
    ],
)
def test_single_run_designs_match_nilearn(model_kw):
    confounds = pd.DataFrame({"motion": np.sin(np.arange(40) / 3.0), "csf": np.cos(np.arange(40) / 5.0)})
    theirs, w_theirs = _nilearn_designs(IMG40, model_kw, events=EVENTS, confounds=confounds)
    ours, w_ours = _ours([40], model_kw, events=EVENTS, confounds=confounds)
    _assert_same_designs(ours, theirs)
    # nilearn's warnings, plus ours for events after the last scan (nilearn drops them silently)
    late = [w for w in w_ours if "after the last scan" in w[1]]
    assert [w for w in w_ours if w not in late] == w_theirs
    last_scan = (40 - 1 + model_kw.get("slice_time_ref", 0.0)) * model_kw["t_r"]
    assert len(late) == int((EVENTS["onset"] > last_scan).any())


def test_multi_run_designs_with_array_confounds_and_sample_masks():
    confounds = [np.random.default_rng(2).normal(size=(40, 2)), np.random.default_rng(3).normal(size=(30, 1))]
    masks = [np.arange(40) >= 3, np.array([0, 2, 4, 5, 6, 7, 9, 12, 20, 29])]
    fit_kw = {"events": [EVENTS, EVENTS2], "confounds": confounds, "sample_masks": masks}
    theirs, _ = _nilearn_designs([IMG40, IMG30], {"t_r": T_R}, **fit_kw)
    ours, _ = _ours([40, 30], {"t_r": T_R}, **fit_kw)
    _assert_same_designs(ours, theirs)
    assert ours[0].shape == (37, 6) and ours[1].shape[0] == 10
    assert list(ours[0].columns[2:4]) == ["confound_0", "confound_1"]


def test_tables_from_paths(tmp_path):
    ev_tsv, ev_csv, conf_tsv = tmp_path / "ev.tsv", tmp_path / "ev.csv", tmp_path / "conf.tsv"
    EVENTS.to_csv(ev_tsv, sep="\t", index=False)
    EVENTS2.to_csv(ev_csv, index=False)
    pd.DataFrame({"c0": np.linspace(0, 1, 30)}).to_csv(conf_tsv, sep="\t", index=False)
    fit_kw = {"events": [ev_tsv, str(ev_csv)], "confounds": [np.ones((40, 1)) * np.arange(40)[:, None], conf_tsv]}
    theirs, _ = _nilearn_designs([IMG40, IMG30], {"t_r": T_R}, **fit_kw)
    ours, _ = _ours([40, 30], {"t_r": T_R}, **fit_kw)
    _assert_same_designs(ours, theirs)


def test_given_design_matrices_pass_through_with_nilearns_warnings(tmp_path):
    built = run_design_matrices([40, 30], T_R, events=[EVENTS, EVENTS2])
    path = tmp_path / "dm.csv"
    built[1].to_csv(path, index=False)  # nilearn reads CSVs without an index column
    fit_kw = {"design_matrices": [built[0], path], "events": EVENTS, "sample_masks": [np.arange(5, 40), np.arange(30)]}
    theirs, w_theirs = _nilearn_designs([IMG40, IMG30], {"t_r": T_R, "hrf_model": "spm"}, **fit_kw)
    ours, w_ours = _ours([40, 30], {"t_r": T_R, "hrf_model": "spm"}, **fit_kw)
    _assert_same_designs(ours, theirs)
    assert w_ours == w_theirs == [
        (UserWarning, "If design matrices are supplied, events will be ignored."),
        (UserWarning, "If design matrices are supplied, [hrf_model, t_r] will be ignored."),
    ]


def test_nilearn_event_warnings_and_singular_regularisation_pass_through():
    events = EVENTS.drop(columns="trial_type").assign(extra=1)
    confounds = np.column_stack([np.arange(40.0), np.arange(40.0)])  # rank deficient
    theirs, w_theirs = _nilearn_designs(IMG40, {"t_r": T_R}, events=events, confounds=confounds)
    ours, w_ours = _ours([40], {"t_r": T_R}, events=events, confounds=confounds)
    _assert_same_designs(ours, theirs)
    assert w_ours == w_theirs
    texts = " ".join(m for _, m in w_ours)
    assert "'trial_type' column not found" in texts and "extra" in texts and "singular at working precision" in texts


def test_negative_durations_warn_but_match_nilearn():
    events = EVENTS.assign(duration=[2.0, -3.0, 1.0, 3.0, 2.0])
    theirs, w_theirs = _nilearn_designs(IMG40, {"t_r": T_R}, events=events)
    ours, w_ours = _ours([40], {"t_r": T_R}, events=events)
    _assert_same_designs(ours, theirs)
    assert w_theirs == []  # nilearn is silent; we warn
    assert len(w_ours) == 1 and "negative duration" in w_ours[0][1] and "-3.0" in w_ours[0][1]


def test_events_after_the_last_scan_warn_but_match_nilearn():
    events = EVENTS.assign(onset=[4.0, 18.0, 33.0, 79.0, 610.0])  # last scan at t = 78 s
    theirs, w_theirs = _nilearn_designs(IMG40, {"t_r": T_R}, events=events)
    ours, w_ours = _ours([40], {"t_r": T_R}, events=events)
    _assert_same_designs(ours, theirs)
    assert w_theirs == []  # nilearn drops them silently; we warn
    assert len(w_ours) == 1
    assert "events[0] has 2 event(s) with an onset after the last scan of run 0 (t = 78 s" in w_ours[0][1]
    assert "610.0" in w_ours[0][1] and "79.0" in w_ours[0][1]


def test_frame_times():
    np.testing.assert_allclose(frame_times(5, 2.0, 0.5), 2.0 * (np.arange(5) + 0.5), rtol=0, atol=1e-12)
    dm = run_design_matrices(40, T_R, events=EVENTS)[0]
    np.testing.assert_array_equal(dm.index.to_numpy(), frame_times(40, T_R))


# --------------------------------------------------------------------------- errors: same type as nilearn


def _bad_sep(tmp_path):
    path = tmp_path / "ev.tsv"
    path.write_text("onset duration trial_type\n1 1 a\n")
    return path


def _txt(tmp_path):
    path = tmp_path / "ev.txt"
    EVENTS.to_csv(path, sep="\t", index=False)
    return path


DM40 = run_design_matrices(40, T_R, events=EVENTS)[0]
CASES = {
    # name: (n_scans, model kwargs, fit kwargs (callable of tmp_path allowed), substrings of our message)
    "no events": ([40], {"t_r": T_R}, {}, ["events or design matrices must be provided"]),
    "no t_r": ([40], {}, {"events": EVENTS}, ["t_r not given"]),
    "t_r negative": ([40], {"t_r": -2.0}, {"events": EVENTS}, ["'t_r' must be positive", "-2.0"]),
    "t_r string": ([40], {"t_r": "2"}, {"events": EVENTS}, ["'t_r'", "'2'"]),
    "slice_time_ref": ([40], {"t_r": T_R, "slice_time_ref": 2}, {"events": EVENTS}, ["between 0 and 1", "Got 2"]),
    "events count": ([40, 30], {"t_r": T_R}, {"events": [EVENTS]}, ["len(run_imgs) 2", "len(events) 1"]),
    "confounds count": (
        [40, 30], {"t_r": T_R}, {"events": [EVENTS, EVENTS2], "confounds": [np.ones((40, 1))]}, ["len(confounds) 1"]
    ),
    "designs count": ([40, 30], {}, {"design_matrices": [DM40]}, ["len(run_imgs) 2", "len(design_matrices) 1"]),
    "no onset": ([40], {"t_r": T_R}, {"events": EVENTS.drop(columns="onset")}, ["Run 0", "no onset column"]),
    "no duration": ([40], {"t_r": T_R}, {"events": EVENTS.drop(columns="duration")}, ["no duration column"]),
    "nan onset": ([40], {"t_r": T_R}, {"events": EVENTS.assign(onset=np.nan)}, ["nan values: onset"]),
    "events array": ([40], {"t_r": T_R}, {"events": EVENTS.to_numpy()}, ["events", "numpy.ndarray", "idx 0"]),
    "events tuple": ([40, 30], {"t_r": T_R}, {"events": (EVENTS, EVENTS2)}, ["len(events) 1"]),
    "separators": ([40], {"t_r": T_R}, lambda p: {"events": _bad_sep(p)}, ["not separated by tabs", "ev.tsv"]),
    "suffix": ([40], {"t_r": T_R}, lambda p: {"events": _txt(p)}, ["only be TSV or CSV", "ev.txt"]),
    "confound rows": (
        [40], {"t_r": T_R}, {"events": EVENTS, "confounds": np.ones((20, 1))}, ["index 0", "20 rows", "40 scans"]
    ),
    "confound nan": (
        [40], {"t_r": T_R}, {"events": EVENTS, "confounds": pd.DataFrame({"fd": [np.nan] + [0.0] * 39})}, ["['fd']"]
    ),
    "confound name clash": (
        [40], {"t_r": T_R}, {"events": EVENTS, "confounds": pd.DataFrame({"a": np.arange(40.0)})},
        ["unique names", "confound columns ['a']"],
    ),
    "mask out of range": (
        [40], {"t_r": T_R}, {"events": EVENTS, "sample_masks": np.arange(5, 42)}, ["[40, 41]", "40 scans", "run 0"]
    ),
    "mask negative": ([40], {"t_r": T_R}, {"events": EVENTS, "sample_masks": np.arange(-1, 20)}, ["negative", "[-1]"]),
    "mask count": (
        [40, 30], {"t_r": T_R}, {"events": [EVENTS, EVENTS2], "sample_masks": [np.arange(20)]}, ["(1)", "(2)"]
    ),
    "mask list of ints": ([40], {"t_r": T_R}, {"events": EVENTS, "sample_masks": list(range(20))}, ["sample_masks[0]"]),
    "design rows": ([40], {}, {"design_matrices": DM40.iloc[:25]}, ["25 rows", "40 scans", "run 0"]),
    "design nan": ([40], {}, {"design_matrices": DM40.assign(a=np.nan)}, ["design_matrices[0]", "['a']"]),
    "design inf": ([40], {}, {"design_matrices": DM40.assign(b=np.inf)}, ["['b']"]),
    "design strings": ([40], {}, {"design_matrices": DM40.assign(b="x")}, ["non-numeric", "['b']"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_errors_have_nilearns_type_and_name_the_culprit(name, tmp_path):
    n_scans, model_kw, fit_kw, fragments = CASES[name]
    fit_kw = fit_kw(tmp_path) if callable(fit_kw) else fit_kw
    imgs = IMG40 if len(n_scans) == 1 else [IMG40, IMG30]
    theirs, _ = _nilearn_designs(imgs, model_kw, **fit_kw)
    ours, _ = _ours(n_scans, model_kw, **fit_kw)
    assert isinstance(theirs, Exception), f"nilearn accepted {name}"
    assert isinstance(ours, Exception), f"we accepted {name}"
    assert type(ours) is type(theirs), (ours, theirs)
    for fragment in fragments:
        assert fragment in str(ours), (fragment, str(ours))


@pytest.mark.parametrize(
    ("fit_kw", "error", "fragment"),
    [
        # nilearn crashes with IndexError('tuple index out of range')
        ({"events": EVENTS, "confounds": np.ones(40)}, ValueError, "shape (40,)"),
        # nilearn accepts these two (empty silently; arrays crash with AttributeError)
        ({"design_matrices": DM40.iloc[:, :0]}, ValueError, "no columns"),
        ({"design_matrices": DM40.to_numpy()}, TypeError, "numpy.ndarray"),
    ],
)
def test_stricter_than_nilearn(fit_kw, error, fragment):
    with pytest.raises(error) as info:
        run_design_matrices([40], T_R if "events" in fit_kw else None, **fit_kw)
    assert fragment in str(info.value)


# --------------------------------------------------------------------------- contrasts

COLS = ["DStDSp", "SStSSp", "a", "b", "drift_1", "constant"]


@pytest.mark.parametrize("expr", ["DStDSp - SStSSp", "2*a - b", "a", "(a + b) / 2 - constant"])
def test_parse_expression_matches_nilearn(expr):
    con, stat = parse_contrast(expr, COLS)
    np.testing.assert_array_equal(con, expression_to_contrast_vector(expr, COLS)[None])
    assert stat == "t" and con.dtype == np.float64


@pytest.mark.parametrize(
    ("expr", "fragments"),
    [("a - zz", ["zz", "not defined", str(COLS)]), ("a -* b", ["is not valid", str(COLS), "Parser error"])],
)
def test_parse_invalid_expression(expr, fragments):
    with pytest.raises(ValueError, match="not valid") as nl:
        expression_to_contrast_vector(expr, COLS)
    with pytest.raises(ValueError) as ours:
        parse_contrast(expr, COLS)
    assert str(ours.value).startswith(str(nl.value))
    for fragment in fragments:
        assert fragment in str(ours.value)


@pytest.mark.parametrize(
    ("con", "stat_type", "expected_type", "q"),
    [
        ([1, -1], None, "t", 1),
        (np.array([[1, -1]]), None, "t", 1),
        (np.eye(3), None, "F", 3),
        (np.array([1, 0, 0, 0, 0, 1]), "F", "F", 1),
        (np.eye(2), "F", "F", 2),
    ],
)
def test_parse_numeric_padding_matches_nilearn(con, stat_type, expected_type, q):
    theta = np.zeros((len(COLS), 3))
    _, w_theirs = _capture(lambda: nl_pad_contrast(np.atleast_2d(con), theta, expected_type))
    (out, got_type), w_ours = _capture(lambda: parse_contrast(con, COLS, stat_type))
    assert got_type == expected_type and out.shape == (q, len(COLS))
    np.testing.assert_array_equal(out[:, : np.shape(con)[-1]], np.atleast_2d(con))
    assert not out[:, np.shape(con)[-1] :].any()
    assert w_ours == w_theirs


@pytest.mark.parametrize("con", [np.ones(7), np.ones((2, 9))])
def test_parse_too_long_matches_nilearn(con):
    stat = "t" if con.ndim == 1 else "F"
    with pytest.raises(ValueError) as nl:
        nl_pad_contrast(np.atleast_2d(con), np.zeros((len(COLS), 1)), stat)
    with pytest.raises(ValueError) as ours:
        parse_contrast(con, COLS)
    assert str(ours.value) == str(nl.value)


@pytest.mark.parametrize("con", [np.array([[1, -1, 0], [-1, 1, 0]]), np.array([[1, 0], [2, 0], [0, 1]])])
def test_rank_deficient_f_contrast_fails_as_nilearn(fitted, con):
    with pytest.raises(np.linalg.LinAlgError):  # nilearn: 'Singular matrix', from inverting c cov c'
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitted[0].compute_contrast(con, stat_type="F")
    rank = np.linalg.matrix_rank(con)
    message = f"F contrast is rank deficient: its {len(con)} rows have rank {rank}"
    with pytest.raises(np.linalg.LinAlgError, match=message):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parse_contrast(con, COLS, "F")


@pytest.fixture(scope="module")
def fitted():
    events = [EVENTS, EVENTS2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = _model(t_r=T_R).fit(IMG40, EVENTS)
        two = _model(t_r=T_R).fit([IMG40, IMG30], events)
    return one, two


@pytest.mark.parametrize(
    ("con", "stat_type", "fragment"),
    [(np.eye(2), "t", "only one row"), (np.eye(2), "x", "'stat_type' must be one of ['t', 'F']")],
)
def test_parse_bad_stat_type_matches_nilearn(fitted, con, stat_type, fragment):
    theirs, _ = _capture(lambda: fitted[0].compute_contrast(con, stat_type=stat_type))
    with pytest.raises(ValueError) as ours:
        parse_contrast(con, COLS, stat_type)
    assert isinstance(theirs, ValueError) and str(ours.value) == str(theirs) and fragment in str(ours.value)


@pytest.mark.parametrize(
    ("con_def", "n_runs"),
    [
        (np.array([1, -1]), 2),
        ("a - b", 2),
        ([[1, -1]], 2),
        (np.array([1, -1]), 1),
        ("a - b", 1),
        ([[1, -1]], 1),
        (["a", "b"], 2),
        ([1, -1], 1),
        (["a", "b", "a"], 2),
        ({"x": "a"}, 2),
    ],
)
def test_contrasts_per_run_matches_nilearn(fitted, con_def, n_runs):
    model = fitted[n_runs - 1]
    theirs, w_theirs = _capture(lambda: model.compute_contrast(con_def))
    ours, w_ours = _capture(lambda: contrasts_per_run(con_def, n_runs))
    runtime = [w for w in w_theirs if w[0] is RuntimeWarning]
    assert [w for w in w_ours if w[0] is RuntimeWarning] == runtime
    if isinstance(theirs, Exception):
        assert type(ours) is type(theirs) and str(ours).startswith(str(theirs).rstrip("."))
        return
    assert len(ours) == n_runs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # padding, checked elsewhere
        for per_run, cols in zip(ours, (dm.columns for dm in model.design_matrices_)):
            assert parse_contrast(per_run, list(cols))[0].shape == (1, len(cols))
    if n_runs == 2 and len(runtime):
        assert runtime[0][1].startswith("The same contrast will be used for all 2 runs.")


def test_plain_list_for_one_run_explains_the_rule():
    with pytest.raises(ValueError, match="2 contrasts given, while there are 1 runs.*numpy array"):
        contrasts_per_run([1, -1], 1)


@pytest.mark.parametrize(
    "con_vals",
    [
        [np.zeros(3), np.array([1.0, 0.0])],
        [np.zeros(3), np.zeros(2)],
        ["0*a", "a"],
        [[0, 0, 0], np.array([0.0])],  # nilearn's test misses lists
        [np.array([]), "b"],
    ],
)
def test_nonnull_runs_matches_nilearn(fitted, con_vals):
    model = fitted[1]
    theirs, w_theirs = _capture(lambda: model.compute_contrast(list(con_vals)))
    columns = [list(dm.columns) for dm in model.design_matrices_]
    ours, w_ours = _capture(lambda: nonnull_runs(con_vals, columns))
    null_theirs = [w for w in w_theirs if "is null" in w[1]]
    assert [w for w in w_ours if "is null" in w[1]] == null_theirs
    if isinstance(theirs, Exception):
        assert isinstance(ours, ValueError) and str(ours) == str(theirs)
    else:
        assert ours == [i for i in range(2) if (UserWarning, f"Contrast for run {i} is null.") not in null_theirs]


def _daskglm_model(**kw):
    from daskglm import FirstLevelModel as DaskglmFirstLevelModel

    return DaskglmFirstLevelModel(mask_img=MASK, noise_model="ols", minimize_memory=True, client="sync", **kw)


def test_condition_names_as_events_are_said_to_be_condition_names():
    """nilearn (and daskglm before) said only "len(run_imgs) 1 does not match len(events) 5"."""
    img = _img(30, 0)
    with pytest.raises(ValueError, match=r"look like condition names, not events tables"):
        _daskglm_model(t_r=T_R).fit(img, events=["DStDSp", "DStSSp", "FirstSt", "SStDSp", "SStSSp"])
    with pytest.raises(ValueError, match=r"look like condition names"):
        _daskglm_model(t_r=T_R).fit(img, events="language")


def test_make_design_matrices_are_the_fit_designs_without_reading_data(tmp_path):
    events = pd.DataFrame({"onset": [0.0, 20.0, 40.0], "duration": [5.0] * 3, "trial_type": ["a", "b", "a"]})
    img = _img(30, 1)
    model = _daskglm_model(t_r=T_R, store=tmp_path / "stores")
    before = model.make_design_matrices(img, events=events)
    assert not (tmp_path / "stores").exists()  # nothing ingested
    theirs, _ = _nilearn_designs([img], {"t_r": T_R}, events=events)
    _assert_same_designs(before, theirs)
    model.fit(img, events=events)
    _assert_same_designs(before, model.design_matrices_)
