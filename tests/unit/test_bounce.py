"""dma-bounce: reading svm-migrate's bind line."""

import errno

from harness.scenarios.bounce import bind_errno


def test_bind_errno() -> None:
    refused = '{"test": "bind", "ok": false, "errno": 95, "error": "Operation not supported"}\n'
    assert bind_errno(refused) == errno.EOPNOTSUPP
    assert bind_errno('noise\n{"test": "bind", "ok": true, "ctx": 1}\n{"test": "to_dev"}\n') == 0
    assert bind_errno('{"test": "to_dev", "ok": true}\n') is None
    assert bind_errno("") is None
