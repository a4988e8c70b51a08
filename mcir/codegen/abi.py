"""The numbers of the C ABI (``docs/abi.md``): return codes, dtype codes, quantisation kinds.

``mcir.runtime`` keeps its own copy of these (it must load libraries without llvmlite);
a test checks that both agree.
"""

from __future__ import annotations

ABI_VERSION = 1

# return codes of mcir_NAME_run
OK = 0
ERR_NULL_ARGUMENT = 1
ERR_NULL_TENSOR = 2
ERR_WORKSPACE_ALIGNMENT = 3
ERR_INDEX_OUT_OF_RANGE = 4
ERROR_NAMES = {
    ERR_NULL_ARGUMENT: "MCIR_ERR_NULL_ARGUMENT: the inputs, outputs or workspace pointer is NULL",
    ERR_NULL_TENSOR: "MCIR_ERR_NULL_TENSOR: an input or output tensor pointer is NULL",
    ERR_WORKSPACE_ALIGNMENT: "MCIR_ERR_WORKSPACE_ALIGNMENT: the workspace is not 64-byte aligned",
    ERR_INDEX_OUT_OF_RANGE: "MCIR_ERR_INDEX_OUT_OF_RANGE: an embedding/gather index is outside its table",
}

DTYPE_CODES = {"f32": 1, "f16": 2, "bf16": 3, "i64": 4, "i32": 5, "i16": 6, "i8": 7, "u8": 8, "bool": 9}
QUANT_NONE, QUANT_PER_TENSOR, QUANT_PER_AXIS = 0, 1, 2
