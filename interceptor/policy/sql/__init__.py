"""What a SQL string would do, statement by statement (sans-IO, postgres dialect): the
analyser, in modules of one job each. The names other packages use are these."""

from interceptor.policy.sql.lineage import (
    SHADOWING_RULE, AnyCatalog, SchemaCatalog, analyse, numeric_shape, shape_holds,
)

__all__ = ["SHADOWING_RULE", "AnyCatalog", "SchemaCatalog", "analyse", "numeric_shape", "shape_holds"]
