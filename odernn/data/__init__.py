"""Irregular time-series data: benchmark datasets with their published protocols, and any user's series.

Benchmarks (each a ``torch.utils.data.Dataset`` whose items feed ``odernn.ODERNN`` directly):

- :func:`walker2d` (``split``): Walker2D kinematics, ODE-LSTM protocol, 9,684 / 1,272 / 1,937 windows.
- :func:`plane_vibration` (``split``): F-16 ground vibration test, HBNODE protocol, 509 / 254 / 254 segments.
- :func:`silverbox`: the Silverbox record (input ``V1``, output ``V2``).

Every item, of a benchmark or of your own series, follows one schema, :class:`Item`: inputs ``x``, ``t``,
``mask``; next-step targets ``x_next``, ``t_next``, ``mask_next``; future targets ``x_future``, ``t_future``,
``mask_future``; outputs at the input stamps ``y``, ``mask_y``. Every loader takes ``normalize=False`` (raw
values; ``True`` standardises with training statistics; or a :class:`Normalization`).

Files are looked up under ``root=``, else ``$ODERNN_DATA``, else a per-user cache (:func:`data_root`), read
exactly as registered in the package file ``registry.txt``, verified by SHA-256 and downloaded atomically when
missing (:func:`ensure_dataset`, :func:`verify_files`). Nothing is read, downloaded or printed on import.

Your own series: :class:`IrregularSeriesDataset` (from a wide or long pandas DataFrame or from arrays, NaN = not
observed), :meth:`IrregularSeriesDataset.windows`, :func:`collate_irregular` (padding with mask and lengths).
Times: :func:`encode_times` (the one conversion of datetimes, durations and numbers to float times, used by every
constructor and the forecaster), :class:`TimeEncoder` (datetimes <-> float times), :func:`parse_time_unit` (the
one ``time_unit`` vocabulary). Irregularity tools: :func:`drop_stamps`, :func:`sampling_stats`.

Module map: ``_time`` (time encoding), ``_schema`` (item schema), ``_validate`` (input checks), ``_series``
(user series), ``_windows`` (windows of them), ``_collate`` (batching), ``_stamps`` / ``_sampling`` (irregularity
tools), ``_normalized`` (normalisation), ``_registry`` + ``registry.txt`` (what files exist), ``_checksum``,
``_download``, ``_root`` (finding, verifying and fetching files), one module per benchmark.
"""

from ._checksum import ENV_VAR, ChecksumError, MissingDataError, sha256_file
from ._collate import collate_irregular
from ._download import TIMEOUT_ENV_VAR, download_timeout
from ._normalized import Normalization
from ._plane_vibration import PlaneVibration, plane_vibration
from ._registry import DataFile, Source, registered_datasets, registered_files
from ._root import data_root, default_cache_dir, ensure_dataset, verify_files
from ._sampling import sampling_stats
from ._schema import Item
from ._series import IrregularSeriesDataset
from ._silverbox import Silverbox, silverbox
from ._stamps import drop_stamps
from ._time import UNIT_NAMES, TimeEncoder, encode_times, parse_time_unit, time_kind
from ._walker2d import Walker2d, walker2d
from ._windows import SeriesWindows

__all__ = [
    "ENV_VAR",
    "TIMEOUT_ENV_VAR",
    "UNIT_NAMES",
    "ChecksumError",
    "DataFile",
    "IrregularSeriesDataset",
    "Item",
    "MissingDataError",
    "Normalization",
    "PlaneVibration",
    "SeriesWindows",
    "Silverbox",
    "Source",
    "TimeEncoder",
    "Walker2d",
    "collate_irregular",
    "data_root",
    "default_cache_dir",
    "download_timeout",
    "drop_stamps",
    "encode_times",
    "ensure_dataset",
    "parse_time_unit",
    "plane_vibration",
    "registered_datasets",
    "registered_files",
    "sampling_stats",
    "sha256_file",
    "silverbox",
    "time_kind",
    "verify_files",
    "walker2d",
]
