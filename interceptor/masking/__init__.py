"""Masking result values: classifiers find secrets, styles replace them, DataRows are
rewritten only where the policy asks (see column.py and datarow.py), whole-row values
(composites, row JSON) only in the masked fields (shapes.py)."""

from interceptor.errors import MaskingError
from interceptor.masking.classifiers import CLASSIFIERS, Classifier, Span, api_key, card, classify, email, iban, national_id
from interceptor.masking.column import REDACTED, STYLES, TEXT_TYPE_OIDS, ColumnMasker, ConstantMasker, FieldMasker
from interceptor.masking.datarow import mask_datarow
from interceptor.masking.shapes import mask_json_members, mask_record_binary, mask_record_text

__all__ = [
    "CLASSIFIERS",
    "STYLES",
    "TEXT_TYPE_OIDS",
    "Classifier",
    "ColumnMasker",
    "ConstantMasker",
    "FieldMasker",
    "MaskingError",
    "REDACTED",
    "Span",
    "api_key",
    "card",
    "classify",
    "email",
    "iban",
    "mask_datarow",
    "mask_json_members",
    "mask_record_binary",
    "mask_record_text",
    "national_id",
]
