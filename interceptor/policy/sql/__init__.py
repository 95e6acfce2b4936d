"""What a SQL string would do, statement by statement (sans-IO, postgres dialect).

The analyser turns text into `Statement` values (interceptor.policy.statement): the kinds
of action each statement takes on which relations and columns, the functions the server
will run for it, which output columns derive from which base columns, and what it changes
in the session. It never decides; the engine judges the result. Anything it does not fully
understand comes back with `error` set, and the engine denies it.

Its modules, one job each: split (a string into statements, each classified), analysis
(one parsed statement's facts), names (names resolved as the server resolves them),
writes (the actions), calls (code the server runs unnamed), lineage (which base columns
each column reference reads), uses (how result columns and the rest use them, for
masking), shape (numeric shapes for the decision cache), tree (reading sqlglot's tree).
"""

from interceptor.policy.sql.names import SHADOWING_RULE, AnyCatalog, SchemaCatalog
from interceptor.policy.sql.shape import numeric_shape, shape_holds
from interceptor.policy.sql.split import analyse

__all__ = ["SHADOWING_RULE", "AnyCatalog", "SchemaCatalog", "analyse", "numeric_shape", "shape_holds"]
