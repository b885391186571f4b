"""Design matrices and contrast definitions with nilearn 0.14's semantics.

* :func:`run_design_matrices` validates ``events`` / ``confounds`` /
  ``sample_masks`` / ``design_matrices`` as ``FirstLevelModel.fit`` does and
  builds designs with nilearn's ``make_first_level_design_matrix`` (HRFs,
  drifts, singular-design regularisation and its warning all come from it).
* :func:`contrasts_per_run`, :func:`nonnull_runs` and :func:`parse_contrast`
  reproduce ``FirstLevelModel.compute_contrast``: splitting a definition over
  runs, skipping null runs, and turning each run's definition into a padded
  ``(q, p)`` matrix (expressions via nilearn's ``expression_to_contrast_vector``).
* :func:`contrast_dict` and :func:`contrast_matrices`: named contrasts (the
  ``contrasts`` of reports and batches) and their per-run matrices.

Where nilearn raises we raise the same exception type, with messages that also
name the run, columns or sizes; where nilearn warns we warn with its text.
"""

from __future__ import annotations

import csv
import difflib
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from nilearn.glm.contrasts import expression_to_contrast_vector
from nilearn.glm.first_level import make_first_level_design_matrix

from ..kernels.stats import pad_contrast

__all__ = ["run_design_matrices", "sample_mask_indices", "load_events_table",
           "parse_contrast", "contrasts_per_run", "nonnull_runs", "frame_times", "contrast_dict",
           "contrast_matrices"]

#: FirstLevelModel's defaults of the design-only parameters, in nilearn's order
#: (it warns about non-default values when design matrices are given).
_DESIGN_DEFAULTS: dict[str, Any] = dict(drift_model="cosine", drift_order=1, fir_delays=None, high_pass=0.01,
                                         hrf_model="glover", min_onset=-24, slice_time_ref=0.0, t_r=None)
_STAT_TYPES = ["t", "F"]


def frame_times(n_scans: int, t_r: float, slice_time_ref: float = 0.0) -> np.ndarray:
    """Acquisition times of a run's scans, exactly as nilearn computes them.

    Returns
    -------
    ndarray, shape (n_scans,)
        ``linspace(slice_time_ref * t_r, (n_scans - 1 + slice_time_ref) * t_r, n_scans)``.
    """
    return np.linspace(slice_time_ref * t_r, (n_scans - 1 + slice_time_ref) * t_r, n_scans)


def _as_runs(value: Any) -> list:
    # nilearn's rule: only a *list* holds one entry per run; anything else
    # (including a tuple) is a single entry.
    return value if isinstance(value, list) else [value]


def _check_count(n_runs: int, entries: list, name: str) -> None:
    if len(entries) != n_runs:
        raise ValueError(f"len(run_imgs) {n_runs} does not match len({name}) {len(entries)}")


def _load_table(table: Any, name: str, idx: int, allow_array: bool) -> pd.DataFrame | np.ndarray:
    """Load one table: DataFrame as is, ``.tsv``/``.csv`` path read (no index column)."""
    if isinstance(table, os.PathLike):
        table = os.fspath(table)
    if isinstance(table, pd.DataFrame) or (allow_array and isinstance(table, np.ndarray)):
        return table
    if not isinstance(table, str):
        allowed = "a pandas DataFrame, a Path object or a string" + (", or a numpy array" if allow_array else "")
        raise TypeError(f"{name} can only be {allowed}. A {type(table)} was provided at idx {idx}")
    suffix = Path(table).suffix
    if suffix not in (".tsv", ".csv"):
        raise ValueError(f"Tables to load can only be TSV or CSV.\nGot {table} ({name}[{idx}])")
    return pd.read_csv(table, sep="\t" if suffix == ".tsv" else ",")


def _check_events_separators(path: str, idx: int) -> None:
    # nilearn sniffs the first line of every events file for tabs or commas.
    try:
        with open(path) as fh:
            first_line = fh.readline()
    except OSError:
        return  # a missing file is reported when it is read
    try:
        csv.Sniffer().sniff(first_line, delimiters=[",", "\t"])
    except csv.Error as exc:
        raise ValueError("The values in the events file are not separated by tabs; please enforce BIDS conventions: "
                         f"events[{idx}] = {path!r}, first line {first_line.rstrip()!r}") from exc


def _check_not_condition_names(events: Any) -> None:
    """Condition names given as ``events`` (a common slip): said so, not counted as runs.

    A ``str`` with no file suffix that is not an existing file cannot be an
    events table; nilearn would report only that the number of entries differs
    from the number of runs (or that the file is not a TSV).
    """
    entries = events if isinstance(events, (list, tuple)) else [events]
    names = [ev for ev in entries if isinstance(ev, str) and not Path(ev).suffix and not os.path.exists(ev)
             and "://" not in ev]
    if names:
        shown = events if isinstance(events, str) else entries if len(entries) <= 6 else [*entries[:6], "..."]
        raise ValueError(
            f"events {shown!r} look like condition names, not events tables: give one events table per run "
            "(a DataFrame with onset, duration and trial_type columns, or the path of a .tsv/.csv file "
            "holding them); the conditions are the trial_type values of the table")


def _check_number(value: Any, name: str, allow_none: bool) -> None:
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if not (number or (value is None and allow_none)):
        raise TypeError(f"'{name}' must be a float or an int{' or None' if allow_none else ''}. Got: {value!r}")


def _differs(value: Any, default: Any) -> bool:
    try:
        return bool(value != default)
    except (TypeError, ValueError):  # e.g. an array compared with None
        return True


def _sample_masks(sample_masks: Any, n_scans: list[int]) -> list[np.ndarray] | None:
    """Per-run int32 indices of the kept scans (boolean masks converted), validated."""
    if sample_masks is None:
        return None
    if not isinstance(sample_masks, (list, tuple, np.ndarray)):
        raise TypeError(f"'sample_masks' must be a numpy array (one run) or a list/tuple of arrays. "
                        f"Got: {type(sample_masks)}")
    entries = [sample_masks] if isinstance(sample_masks, np.ndarray) else list(sample_masks)
    masks = []
    for i, entry in enumerate(entries):
        if np.ndim(entry) != 1:
            raise TypeError(f"sample_masks[{i}] must be a 1D array of scan indices or booleans; got {entry!r}. A list "
                            "or tuple holds one mask per run: pass a numpy array for a single run.")
        arr = np.asarray(entry)
        if arr.size and all(type(v) in (bool, np.bool_) for v in entry):
            arr = np.flatnonzero(arr)
        if arr.size == 0:
            raise ValueError(f"sample_masks[{i}] keeps no scans.")
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise TypeError(f"sample_masks[{i}] must hold scan indices or booleans; got dtype {arr.dtype}.")
        if arr.min() < 0:
            raise ValueError(f"sample_mask should not contain negative values: sample_masks[{i}] has "
                             f"{arr[arr < 0].tolist()}.")
        masks.append(arr.astype(np.int32))
    if len(masks) != len(n_scans):
        raise ValueError(f"Number of sample_mask ({len(masks)}) not matching number of runs ({len(n_scans)}).")
    for i, (mask, n) in enumerate(zip(masks, n_scans)):
        bad = mask[mask >= n]
        if bad.size:
            raise IndexError(f"sample_masks[{i}] has indices {bad.tolist()} out of range for run {i}, which has {n} "
                             f"scans (valid indices 0..{n - 1}).")
    return masks


def sample_mask_indices(sample_masks: Any, n_scans: Sequence[int]) -> list[np.ndarray | None]:
    """Each run's kept scans as int32 indices (None: every scan), validated as nilearn does.

    Parameters
    ----------
    sample_masks : ndarray, list of ndarray, or None
        As ``FirstLevelModel.fit``: indices or booleans, one array per run.
    n_scans : sequence of int, length n_runs

    Returns
    -------
    list, length n_runs, of ndarray (n_kept_i,) or None
    """
    masks = _sample_masks(sample_masks, [int(n) for n in n_scans])
    return list(masks) if masks is not None else [None] * len(n_scans)


def load_events_table(events: Any) -> pd.DataFrame | None:
    """One run's events as a DataFrame (a path to a .tsv/.csv is read), or None if it cannot be read.

    Used for reporting only (the trial types of the runs): ``run_design_matrices``
    is what validates events.
    """
    if isinstance(events, pd.DataFrame):
        return events
    try:
        return _load_table(events, "events", 0, allow_array=False)
    except (OSError, TypeError, ValueError):
        return None


def _check_given_design(dm: pd.DataFrame, n: int, idx: int) -> None:
    where = f"design_matrices[{idx}]"
    if dm.shape[1] == 0:
        raise ValueError(f"{where} has no columns; the design matrix cannot be empty.")
    names = [str(c) for c in dm.columns]
    not_numeric = [str(c) for c, t in dm.dtypes.items() if not pd.api.types.is_numeric_dtype(t)]
    if not_numeric:
        raise ValueError(f"{where} has non-numeric columns {not_numeric}.")
    if dm.shape[0] != n:
        raise ValueError(f"{where} has {dm.shape[0]} rows but run {idx} has {n} scans; they must match.")
    finite = np.isfinite(dm.to_numpy(dtype=np.float64))
    if not finite.all():
        bad = [names[j] for j in np.flatnonzero(~finite.all(axis=0))]
        raise ValueError(f"{where} has NaN or infinite values in columns {bad}.")


def _confounds_matrix(conf: pd.DataFrame | np.ndarray, n: int, idx: int) -> tuple[np.ndarray, list]:
    if isinstance(conf, pd.DataFrame):
        names, matrix = conf.columns.tolist(), conf.to_numpy()
    else:
        matrix = np.asarray(conf)
        if matrix.ndim != 2:
            raise ValueError(f"confounds[{idx}] must be 2D (n_scans, n_confounds); got shape {matrix.shape}.")
        names = [f"confound_{j}" for j in range(matrix.shape[1])]
    if matrix.shape[0] != n:
        raise ValueError(f"Rows in confounds does not match n_scans in run_img at index {idx}: confounds[{idx}] has "
                         f"{matrix.shape[0]} rows, run {idx} has {n} scans.")
    if np.issubdtype(matrix.dtype, np.number):
        finite = np.isfinite(matrix)
        if not finite.all():
            bad = [str(names[j]) for j in np.flatnonzero(~finite.all(axis=0))]
            raise ValueError(f"Extra regressors contain NaN values: confounds[{idx}] columns {bad} are not finite.")
    return matrix, names


def _warn_negative_durations(events: pd.DataFrame, idx: int) -> None:
    # nilearn accepts negative durations silently (the regressor gets a
    # negative box *before* the onset); we keep its output but warn.
    if "duration" not in events.columns:
        return
    negative = pd.to_numeric(events["duration"], errors="coerce") < 0
    if negative.any():
        rows = events.loc[negative, [c for c in ("onset", "duration", "trial_type") if c in events.columns]]
        warnings.warn(f"events[{idx}] has {int(negative.sum())} event(s) with negative duration; nilearn models "
                      f"them as given (a negative box before the onset):\n{rows.to_string()}", stacklevel=3)


def _warn_events_beyond_run(events: pd.DataFrame, idx: int, n_scans: int, t_r: float,
                            slice_time_ref: float) -> None:
    # nilearn drops them silently: they add nothing to the design (onsets in
    # ms, a wrong t_r or another run's events are common mistakes).
    if "onset" not in events.columns:
        return
    last = frame_times(n_scans, t_r, slice_time_ref)[-1]
    late = pd.to_numeric(events["onset"], errors="coerce") > last
    if late.any():
        rows = events.loc[late, [c for c in ("onset", "duration", "trial_type") if c in events.columns]]
        warnings.warn(f"events[{idx}] has {int(late.sum())} event(s) with an onset after the last scan of run "
                      f"{idx} (t = {last:g} s: {n_scans} scans, t_r = {t_r:g} s); they add nothing to the "
                      f"design:\n{rows.to_string()}", stacklevel=3)


def run_design_matrices(
    n_scans: Sequence[int] | int,
    t_r: float | None,
    events: Any = None,
    confounds: Any = None,
    sample_masks: Any = None,
    design_matrices: Any = None,
    slice_time_ref: float = 0.0,
    hrf_model: Any = "glover",
    drift_model: str | None = "cosine",
    high_pass: float = 0.01,
    drift_order: int = 1,
    fir_delays: Sequence[int] | None = None,
    min_onset: float = -24,
) -> list[pd.DataFrame]:
    """One design matrix per run, as ``FirstLevelModel.fit`` makes ``design_matrices_``.

    Parameters
    ----------
    n_scans : list of int, length n_runs
        Number of scans of each run (an int means one run).
    t_r : float or None
        Repetition time (s); required to build designs from ``events``.
    events : DataFrame, path to .tsv/.csv, or list of those (one per run), optional
    confounds : DataFrame, ndarray (n_scans_i, k), path, or list of those, optional
    sample_masks : ndarray or list of ndarray, optional
        Indices (or booleans) of the scans kept in each run; the design rows
        of the other scans are dropped.
    design_matrices : DataFrame, path to .tsv/.csv, or list of those, optional
        Used as given (takes precedence over ``events`` and ``confounds``,
        which are then ignored with nilearn's warning).
    slice_time_ref, hrf_model, drift_model, high_pass, drift_order, fir_delays, min_onset
        As ``FirstLevelModel``; passed to nilearn's ``make_first_level_design_matrix``.

    Returns
    -------
    list of DataFrame, each of shape (n_kept_scans_i, p_i)
        Indexed by frame times (built designs) or as given.

    Raises
    ------
    ValueError
        Neither events nor designs, events without ``t_r``, count mismatch
        between runs and events/confounds/designs/sample masks, bad events
        (nilearn's checks, prefixed with the run), confounds or given designs
        of the wrong length or with NaN/inf, invalid ``t_r``/``slice_time_ref``.
    TypeError
        Entries of an unsupported type.
    IndexError
        Sample-mask indices beyond a run's scans.
    """
    n_scans = [int(n_scans)] if np.ndim(n_scans) == 0 else [int(n) for n in n_scans]
    if not n_scans or min(n_scans) < 1:
        raise ValueError(f"n_scans must list at least one run, each with >= 1 scan; got {n_scans}.")
    n_runs = len(n_scans)
    _check_number(t_r, "t_r", allow_none=True)
    if t_r is not None and t_r <= 0:
        raise ValueError(f"'t_r' must be positive. Got {t_r} instead.")
    if slice_time_ref is not None:
        _check_number(slice_time_ref, "slice_time_ref", allow_none=False)
        if not 0 <= slice_time_ref <= 1:
            raise ValueError(f"'slice_time_ref' must be between 0 and 1. Got {slice_time_ref} instead.")

    if design_matrices is not None:
        ignored = [name for name, value in (("confounds", confounds), ("events", events)) if value is not None]
        if ignored:
            warnings.warn(f"If design matrices are supplied, {' and '.join(ignored)} will be ignored.", stacklevel=2)
        given = dict(drift_model=drift_model, drift_order=drift_order, fir_delays=fir_delays, high_pass=high_pass,
                     hrf_model=hrf_model, min_onset=min_onset, slice_time_ref=slice_time_ref, t_r=t_r)
        changed = [k for k, default in _DESIGN_DEFAULTS.items() if _differs(given[k], default)]
        if changed:
            warnings.warn(f"If design matrices are supplied, [{', '.join(changed)}] will be ignored.", stacklevel=2)
        entries = _as_runs(design_matrices)
        _check_count(n_runs, entries, "design_matrices")
        designs = [_load_table(dm, "design_matrices", i, allow_array=False) for i, dm in enumerate(entries)]
        for i, dm in enumerate(designs):
            _check_given_design(dm, n_scans[i], i)
        masks = _sample_masks(sample_masks, n_scans)
    else:
        if events is None:
            raise ValueError("events or design matrices must be provided")
        if t_r is None:
            raise ValueError("t_r not given to FirstLevelModel object to compute design from events")
        _check_not_condition_names(events)
        # nilearn sniffs files (any list or tuple) before counting runs (lists only).
        for i, ev in enumerate(events if isinstance(events, (list, tuple)) else [events]):
            if isinstance(ev, (str, os.PathLike)):
                _check_events_separators(os.fspath(ev), i)
            elif not isinstance(ev, pd.DataFrame):
                raise TypeError(f"events can only be a pandas DataFrame, a Path object or a string. "
                                f"A {type(ev)} was provided at idx {i}")
        ev_entries = _as_runs(events)
        _check_count(n_runs, ev_entries, "events")
        ev_tables = [_load_table(ev, "events", i, allow_array=False) for i, ev in enumerate(ev_entries)]
        conf_tables: list = [None] * n_runs
        if confounds is not None:
            conf_entries = _as_runs(confounds)
            _check_count(n_runs, conf_entries, "confounds")
            conf_tables = [_load_table(c, "confounds", i, allow_array=True) for i, c in enumerate(conf_entries)]
        masks = _sample_masks(sample_masks, n_scans)
        if slice_time_ref is None:
            raise TypeError("slice_time_ref=None cannot be used to build designs from events; give a number in [0, 1].")
        designs = []
        for i, n in enumerate(n_scans):
            add_regs, add_names = (None, None) if conf_tables[i] is None else _confounds_matrix(conf_tables[i], n, i)
            _warn_negative_durations(ev_tables[i], i)
            _warn_events_beyond_run(ev_tables[i], i, n, t_r, slice_time_ref)
            fir = [0] if fir_delays is None else fir_delays
            try:
                dm = make_first_level_design_matrix(frame_times(n, t_r, slice_time_ref), ev_tables[i], hrf_model,
                                                    drift_model, high_pass, drift_order, fir, add_regs, add_names,
                                                    min_onset)
            except ValueError as exc:
                detail = ""
                if "unique names" in str(exc) and add_names is not None:
                    types = ev_tables[i]["trial_type"].unique().tolist() if "trial_type" in ev_tables[i] else []
                    detail = f" (confound columns {add_names}; event trial types {types})"
                raise ValueError(f"Run {i} (events[{i}]): {exc}{detail}") from exc
            designs.append(dm)

    if masks is not None:
        designs = [dm.iloc[mask, :] for dm, mask in zip(designs, masks)]
    return designs


def _expression_vector(expression: str, columns: Sequence) -> np.ndarray:
    """nilearn's ``expression_to_contrast_vector``, with the parser's reason kept."""
    columns = list(columns)
    names = pd.Index([str(c) for c in columns])
    repeated = set(names[names.duplicated()])
    named = sorted(repeated & set(re.findall(r"[A-Za-z_]\w*", expression)))
    if named and expression not in names:  # nilearn: "not valid"; a bare name is its first column (nilearn's)
        raise ValueError(f"The expression ({expression}) names {named}, which the design matrix has as more than "
                         "one column; rename the columns or give the contrast as weights.")
    try:
        vec = expression_to_contrast_vector(expression, columns)
    except ValueError as exc:
        cause = exc.__cause__
        undefined = re.search(r"name '([^']+)' is not defined", str(exc))
        close = difflib.get_close_matches(undefined.group(1), [str(c) for c in columns], n=1) if undefined else []
        if close:  # a typo: nilearn's message (with the columns), then the likely name
            raise ValueError(f"{exc} Did you mean {close[0]!r}?") from exc
        if cause is None or undefined:
            raise
        raise ValueError(f"{exc}\nParser error: {type(cause).__name__}: {cause}") from cause
    vec = np.asarray(vec, dtype=np.float64)
    if vec.shape != (len(columns),):
        raise ValueError(
            f"The expression ({expression}) does not define one weight per design column: it evaluates to shape "
            f"{vec.shape}, expected ({len(columns)},). Available matrix columns are: {columns}"
        )
    return vec


def parse_contrast(
    contrast: str | np.ndarray | Sequence, columns: Sequence, stat_type: str | None = None
) -> tuple[np.ndarray, str]:
    """One run's contrast definition as a padded ``(q, p)`` matrix and its type.

    Parameters
    ----------
    contrast : str, array_like of shape (k,) or (q, k)
        A string expression over column names (``"a - b"``, ``"2*a - b"``) or
        numeric weights; ``k < p`` is zero-padded with nilearn's warning.
    columns : sequence, length p
        The run's design column names.
    stat_type : {"t", "F"}, optional
        Default ``"t"`` for a vector or a one-row matrix, ``"F"`` otherwise.

    Returns
    -------
    matrix : ndarray, shape (q, p), float64
        q = 1 for t contrasts.
    stat_type : str
        ``"t"`` or ``"F"``.

    Raises
    ------
    ValueError
        Invalid expression or unknown name (listing the columns), invalid
        ``stat_type``, multi-row t, empty, or more than p columns.
    numpy.linalg.LinAlgError
        (a ``ValueError``) An F contrast whose rows are linearly dependent:
        nilearn fails on it with the same type.
    """
    p = len(columns)
    if isinstance(contrast, str):
        con = _expression_vector(contrast, columns)
    else:
        try:
            con = np.asarray(contrast, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"Contrast {contrast!r} is not a numeric vector or matrix: {exc}") from exc
        if con.ndim not in (1, 2):
            raise ValueError(f"A contrast must be a vector (p,) or a matrix (q, p); got shape {con.shape}: {contrast}")
    dim = con.shape[0] if con.ndim == 2 else 1
    if stat_type is None:
        stat_type = "t" if dim == 1 else "F"
    if stat_type not in _STAT_TYPES:
        raise ValueError(f"'stat_type' must be one of {_STAT_TYPES}.\n'{stat_type}' was provided.")
    con = np.atleast_2d(con)
    if con.size == 0:
        raise ValueError(f"{stat_type} contrasts cannot be empty: got {con}")
    if stat_type == "t" and con.shape[0] != 1:
        raise ValueError(f"t contrasts should have only one row: got {con}.")
    padded = pad_contrast(con, p, stat_type)
    if stat_type == "F" and con.shape[0] > 1 and np.linalg.matrix_rank(padded) < con.shape[0]:
        # nilearn fails with LinAlgError('Singular matrix') inverting c cov c'; same type, said why
        raise np.linalg.LinAlgError(
            f"F contrast is rank deficient: its {con.shape[0]} rows have rank {np.linalg.matrix_rank(padded)}, so "
            f"c cov c' is singular; give linearly independent rows. Contrast:\n{con}")
    return padded, stat_type


def contrasts_per_run(contrast_def: Any, n_runs: int) -> list:
    """Split a ``compute_contrast`` definition into one definition per run.

    nilearn's rule: a ``str`` or ``ndarray`` is one contrast, used for every
    run (with a ``RuntimeWarning`` when there are several runs); a ``list`` or
    ``tuple`` holds one definition per run. So ``[[1, -1]]`` is one contrast
    (repeated), ``[1, -1]`` is two runs' contrasts, and a plain list of
    weights must be given as an array.

    Parameters
    ----------
    contrast_def : str, ndarray, or list/tuple of (str or array_like)
    n_runs : int

    Returns
    -------
    list, length n_runs
        The per-run definitions, unparsed (see :func:`parse_contrast`).

    Raises
    ------
    ValueError
        Other types, or a list whose length is neither 1 nor ``n_runs``.
    """
    if isinstance(contrast_def, (np.ndarray, str)):
        con_vals = [contrast_def]
    elif isinstance(contrast_def, (list, tuple)):
        con_vals = list(contrast_def)
    else:
        raise ValueError(f"contrast_def must be an array or str or list of (array or str). "
                         f"Got {type(contrast_def).__name__}: {contrast_def!r}")
    if len(con_vals) == 1 and n_runs > 1:
        warnings.warn(f"The same contrast will be used for all {n_runs} runs. If the design matrices are not the "
                      "same for all runs, (for example with different column names or column order across runs) you "
                      "should pass contrast as an expression using the name of the conditions as they appear in the "
                      "design matrices.", RuntimeWarning, stacklevel=2)
        return con_vals * n_runs
    if len(con_vals) != n_runs:
        hint = ""
        if all(np.ndim(c) == 0 and not isinstance(c, str) for c in con_vals):
            hint = (f" A list is read as one contrast per run; to give the weights {list(con_vals)} as a single "
                    "contrast, pass a numpy array (or wrap it in another list).")
        raise ValueError(f"{len(con_vals)} contrasts given, while there are {n_runs} runs.{hint}")
    return con_vals


def nonnull_runs(con_vals: Sequence, columns_per_run: Sequence[Sequence]) -> list[int]:
    """Runs whose contrast is not null; nilearn skips the others with a warning.

    Null means ``np.all(value == 0)`` (strings translated first), nilearn's
    exact test: a zero *list* is not null (as in nilearn), an empty array is.

    Parameters
    ----------
    con_vals : sequence, length n_runs
        Output of :func:`contrasts_per_run`.
    columns_per_run : sequence of sequences, length n_runs
        Each run's design column names (to translate string expressions).

    Returns
    -------
    list of int
        Indices of the runs to compute the contrast on.

    Raises
    ------
    ValueError
        Invalid expressions, or every run null.
    """
    values = [_expression_vector(c, cols) if isinstance(c, str) else c for c, cols in zip(con_vals, columns_per_run)]
    keep = []
    for i, value in enumerate(values):
        if np.all(value == 0):
            warnings.warn(f"Contrast for run {i} is null.", UserWarning, stacklevel=2)
        else:
            keep.append(i)
    if not keep:
        raise ValueError("All contrasts provided were null contrasts.")
    return keep


# ------------------------------------------------------------------ named contrasts


def _as_weights(value: Any) -> Any:
    """A list of plain numbers is one weight vector: an array (a list of definitions means one per run)."""
    import numbers

    if isinstance(value, (list, tuple)) and value and all(
            isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) for v in value):
        return np.asarray(value, dtype=float)
    return value


def contrast_dict(contrasts: Any) -> dict[str, Any]:
    """Contrast definitions as ``{name: definition}``, named as nilearn names them.

    nilearn's ``coerce_to_dict`` rules (what ``generate_report`` and
    ``save_glm_to_bids`` apply): a ``str`` or an array is one contrast, a
    list holds several, each named ``str(definition)``; a plain list of
    numbers is one weight vector; a dict is kept, its values being
    :meth:`daskglm.FirstLevelModel.compute_contrast` definitions (a list of
    numbers becomes an array, any other list means one definition per run).

    Parameters
    ----------
    contrasts : str, array, list of them, list of numbers, dict of str to definition, or None
        The contrasts.

    Returns
    -------
    dict of str to (str, ndarray or list)
        The definitions by name, in the given order (empty for None).

    Raises
    ------
    ValueError
        A non-str dict key, an element of a list that is neither a str nor
        numeric weights, an empty list or dict, or another type; the message
        quotes the offending value.
    """
    import numbers
    from collections.abc import Mapping

    if contrasts is None:
        return {}
    if isinstance(contrasts, Mapping):
        bad = [k for k in contrasts if not isinstance(k, str)]
        if bad:
            raise ValueError(f"contrast names (dict keys) must be str; got {bad!r}")
        items = {k: _as_weights(v) for k, v in contrasts.items()}
    elif isinstance(contrasts, (str, np.ndarray)):
        items = {str(contrasts): contrasts}
    elif isinstance(contrasts, (list, tuple)) and contrasts:
        if all(isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) for v in contrasts):
            contrasts = [contrasts]  # one vector of weights
        items = {}
        for c in contrasts:
            try:
                items[str(c)] = c if isinstance(c, (str, np.ndarray)) else np.asarray(c, dtype=float)
            except (TypeError, ValueError):
                raise ValueError(f"a contrast must be a str or numeric weights; got {c!r}") from None
    else:
        raise ValueError("contrasts must be a str, an array, a non-empty list of them, or a dict "
                         f"mapping names to definitions; got {contrasts!r}")
    if not items:
        raise ValueError(f"contrasts is empty: {contrasts!r}")
    return items


def contrast_matrices(contrasts: dict[str, Any], design_matrices: Sequence[pd.DataFrame]
                      ) -> dict[str, list[np.ndarray]]:
    """Each named contrast as one padded ``(q, p)`` matrix per run, as ``compute_contrast`` reads it.

    Parameters
    ----------
    contrasts : dict of str to definition
        As :func:`contrast_dict` returns: a ``str`` expression, weights, or a
        list of them (one per run).
    design_matrices : sequence of DataFrame
        The runs' design matrices (their column names resolve expressions).

    Returns
    -------
    dict of str to list of ndarray
        Per contrast, one ``(q, p_run)`` float64 matrix per run, short weights
        zero-padded. nilearn's warnings (padding, one contrast for all runs)
        are not raised here: ``compute_contrast`` raises them, once.

    Raises
    ------
    ValueError
        A definition that does not parse against a run's columns, or a
        per-run list of the wrong length; the message names the contrast.
    """
    parsed = {}
    for name, definition in contrasts.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                per_run = contrasts_per_run(definition, len(design_matrices))
                parsed[name] = [parse_contrast(c, [str(col) for col in dm.columns])[0]
                                for c, dm in zip(per_run, design_matrices)]
            except (ValueError, TypeError) as err:
                raise ValueError(f"contrast {name!r}: {err}") from err
    return parsed

