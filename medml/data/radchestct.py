"""RAD-ChestCT label mapping onto the 18 CT-RATE labels, for external evaluation (spec part 2, §2.7).

Only the label map is implemented so far: RAD-ChestCT (Draelos et al., MedIA 2021; Zenodo record 6406114, 3,630
scans) labels abnormality x location; a CT-RATE label is positive when its RAD-ChestCT abnormality is present at any
location. The mapping is the public third-party one that yields 16 shared labels (the CT-SSG authors' own mapping
was not found): *Coronary artery wall calcification* is dropped as a duplicate of ``calcification`` and *Mosaic
attenuation pattern* has no counterpart; both are NaN (left out of every metric). The volume reader for the release's
layout is not written yet.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from medml.data.ctrate import LABELS

#: CT-RATE label -> RAD-ChestCT abnormality names (any location); None: no counterpart.
CTRATE_TO_RADCHEST: dict[str, tuple[str, ...] | None] = {
    "Medical material": ("catheter_or_port",),
    "Arterial wall calcification": ("calcification",),
    "Cardiomegaly": ("cardiomegaly",),
    "Pericardial effusion": ("pericardial_effusion",),
    "Coronary artery wall calcification": None,
    "Hiatal hernia": ("hernia",),
    "Lymphadenopathy": ("lymphadenopathy",),
    "Emphysema": ("emphysema",),
    "Atelectasis": ("atelectasis",),
    "Lung nodule": ("nodule", "nodulegr1cm"),
    "Lung opacity": ("opacity",),
    "Pulmonary fibrotic sequela": ("scarring",),
    "Pleural effusion": ("pleural_effusion",),
    "Mosaic attenuation pattern": None,
    "Peribronchial thickening": ("bronchial_wall_thickening",),
    "Consolidation": ("consolidation",),
    "Bronchiectasis": ("bronchiectasis",),
    "Interlobular septal thickening": ("septal_thickening",),
}
SHARED_LABELS = tuple(k for k, v in CTRATE_TO_RADCHEST.items() if v is not None)


def ctrate_targets(present: Iterable[str] | Mapping[str, float]) -> np.ndarray:
    """18 CT-RATE targets (0/1, NaN where RAD-ChestCT has no counterpart) from a scan's RAD-ChestCT findings.

    ``present`` is either the abnormality names found in the scan, or a mapping of RAD-ChestCT label columns
    (``abnormality*location`` or plain ``abnormality``) to 0/1.
    """
    if isinstance(present, Mapping):
        found = {str(k).split("*")[0] for k, v in present.items() if float(v) > 0.5}
    else:
        found = {str(k).split("*")[0] for k in present}
    out = np.full(len(LABELS), np.nan)
    for j, label in enumerate(LABELS):
        names = CTRATE_TO_RADCHEST[label]
        if names is not None:
            out[j] = float(any(n in found for n in names))
    return out
