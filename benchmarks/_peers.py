"""The peer conversions now live in the library (`leanlm.bench.peers`); this re-export keeps the scripts working."""
from leanlm.bench.peers import (NNCF_SUBSET, PEER_NNCF, PEER_ORT, PEER_OV, build_peers, nncf_int8_peer,  # noqa: F401
                                ort_dynamic_peer, ov_bf16_peer)
