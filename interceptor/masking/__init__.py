"""Masking result values: classifiers find secrets, styles replace them, DataRows are
rewritten only where the policy asks (see column.py and datarow.py)."""

from interceptor.masking.classifiers import CLASSIFIERS, Classifier, Span, api_key, card, classify, email, iban, national_id
from interceptor.masking.column import STYLES, TEXT_TYPE_OIDS, ColumnMasker, MaskingError
from interceptor.masking.datarow import mask_datarow

__all__ = [
    "CLASSIFIERS",
    "STYLES",
    "TEXT_TYPE_OIDS",
    "Classifier",
    "ColumnMasker",
    "MaskingError",
    "Span",
    "api_key",
    "card",
    "classify",
    "email",
    "iban",
    "mask_datarow",
    "national_id",
]
