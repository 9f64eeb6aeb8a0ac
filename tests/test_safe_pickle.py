import os
import pickle

import pytest
import torch

from puppet_master.errors import UserInputError
from puppet_master.data.safe_pickle import UnsafePickleError, safe_load_pickle


def test_reads_the_published_test_batches(shared_dir):
    files = sorted((shared_dir / "data" / "dragamove-test-dev").glob("*.pkl"))
    assert len(files) == 20
    for path in files:
        d = safe_load_pickle(path)
        assert d["drags"].shape == (1, 14, 5, 4) and d["drags"].dtype == torch.float32
        assert d["latents"].shape == (1, 14, 4, 32, 32)
        assert d["cond_latent"].shape == (1, 4, 32, 32)
        assert d["embedding"].shape == (1, 1, 1024)
        assert 0 <= d["drags"].min() and d["drags"].max() <= 1
        assert isinstance(d["category"][0], str)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/puppet_master_pwned",))


def test_refuses_a_pickle_that_runs_code(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"drags": _Evil()}))
    if os.path.exists("/tmp/puppet_master_pwned"):
        os.unlink("/tmp/puppet_master_pwned")
    with pytest.raises(UnsafePickleError, match="posix.system|os.system"):
        safe_load_pickle(path)
    assert not os.path.exists("/tmp/puppet_master_pwned")
    path.write_bytes(pickle.dumps(eval))
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        safe_load_pickle(path)


def test_plain_values_and_corrupt_files(tmp_path):
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps({"a": [1, 2.5, "x"], "t": (None, True)}))
    assert safe_load_pickle(path) == {"a": [1, 2.5, "x"], "t": (None, True)}
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"\x80\x04garbage")
    with pytest.raises(UserInputError, match="cannot read pickle"):
        safe_load_pickle(bad)
