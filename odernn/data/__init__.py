"""Irregular time-series data: benchmark datasets with their published protocols, and any user's series.

Benchmarks (each a ``torch.utils.data.Dataset`` whose items feed ``odernn.ODERNN`` directly):

- :func:`walker2d` (``split``): Walker2D kinematics, ODE-LSTM protocol, 9,684 / 1,272 / 1,937 windows.
- :func:`plane_vibration` (``split``): F-16 ground vibration test, HBNODE protocol, 509 / 254 / 254 segments.
- :func:`silverbox`: the Silverbox record (input ``V1``, output ``V2``).

Files are looked up under ``root=``, else ``$ODERNN_DATA``, else a per-user cache (:func:`data_root`), verified by
SHA-256 and downloaded atomically when missing (:func:`ensure_dataset`). Nothing is read, downloaded or printed on
import.

Your own series: :class:`IrregularSeriesDataset` (from a wide or long pandas DataFrame or from arrays, NaN = not
observed), :meth:`IrregularSeriesDataset.windows`, :func:`collate_irregular` (padding with mask and lengths),
:class:`TimeEncoder` (datetimes <-> float times). Irregularity tools: :func:`drop_stamps`, :func:`sampling_stats`.
"""

from ._irregular import drop_stamps, sampling_stats
from ._plane_vibration import PlaneVibration, plane_vibration
from ._root import (
    ENV_VAR,
    ChecksumError,
    DataFile,
    MissingDataError,
    Source,
    data_root,
    default_cache_dir,
    ensure_dataset,
    registered_datasets,
    registered_files,
    sha256_file,
)
from ._series import IrregularSeriesDataset, SeriesWindows, TimeEncoder, collate_irregular
from ._silverbox import Silverbox, silverbox
from ._walker2d import Walker2d, walker2d

__all__ = [
    "ENV_VAR",
    "ChecksumError",
    "DataFile",
    "IrregularSeriesDataset",
    "MissingDataError",
    "PlaneVibration",
    "SeriesWindows",
    "Silverbox",
    "Source",
    "TimeEncoder",
    "Walker2d",
    "collate_irregular",
    "data_root",
    "default_cache_dir",
    "drop_stamps",
    "ensure_dataset",
    "plane_vibration",
    "registered_datasets",
    "registered_files",
    "sampling_stats",
    "sha256_file",
    "silverbox",
    "walker2d",
]
