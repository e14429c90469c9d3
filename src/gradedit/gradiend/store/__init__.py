"""The gradient store: each training row's (pre-pruned) source/target gradient, extracted once into
sharded, memory-mapped safetensors files, then read by every epoch and every seed.

```python
key = store_key(engine, rows, param_map, classes=("masc", "fem"), split="train",
                source="diff", target="diff", dtype="fp32")
store = extract_store("runs/x/gradient_store", engine, rows, param_map, key)   # resumes if interrupted
src, tgt = store.example([3])                                                  # [n], [n] float32
```

``TrainConfig(gradient_store="fp32" | "bf16")`` makes the ``Trainer`` do this in
``experiment_dir/gradient_store``.
"""

from .extract import extract_store, store_key
from .index import (
    INDEX_FILE,
    STORE_DIR,
    STORE_DTYPES,
    StoreIndex,
    StoreKey,
    data_fingerprint,
    model_fingerprint,
    param_map_hash,
)
from .reader import GradientStore

__all__ = ["INDEX_FILE", "STORE_DIR", "STORE_DTYPES", "GradientStore", "StoreIndex", "StoreKey", "data_fingerprint",
           "extract_store", "model_fingerprint", "param_map_hash", "store_key"]
