

def test_recompile_limit_grows_with_compiled_models():
    # every compiled HF model of one class shares a forward code object: dynamo's default limit
    # of 8 graphs would silently leave the fifth two-bucket model running eagerly
    import torch._dynamo.config as dynamo_config

    from leanlm.runtime.torch_compile import _raise_recompile_limit

    before = dynamo_config.recompile_limit
    for _ in range(6):
        _raise_recompile_limit(2)
    assert dynamo_config.recompile_limit >= before + 12 and dynamo_config.recompile_limit >= 20
