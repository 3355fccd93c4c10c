"""asv: the chapter 6-8 layers and conv nets, fastbp beside the book's NumPy classes.

Convolution, Pooling, BatchNormalization (training mode) and Dropout forward/backward at
named sizes (``benchcases.CONV_LAYER_SIZES``: SimpleConvNet's and DeepConvNet's layers),
one SGD step of SimpleConvNet on a batch of 100 images, and DeepConvNet inference
(``accuracy``) on 1,000 images.
"""

from fastbp import benchcases


class _ConvLayer:
    """forward/backward of one family; setup runs both once (compilation stays out)."""

    family = None
    param_names = ["size", "dtype", "impl"]

    def setup(self, size, dtype, impl):
        self.forward, self.backward = benchcases.conv_layer_pair(self.family, impl, size, dtype)
        self.forward()
        self.backward()

    def time_forward(self, size, dtype, impl):
        self.forward()

    def time_backward(self, size, dtype, impl):
        self.backward()


for _family in benchcases.CONV_LAYER_FAMILIES:
    globals()[_family] = type(
        _family,
        (_ConvLayer,),
        {
            "__doc__": f"forward/backward of {_family}, fastbp vs the book's class.",
            "family": _family,
            "params": [
                list(benchcases.conv_layer_sizes(_family)),
                list(benchcases.DTYPES),
                list(benchcases.IMPLS),
            ],
        },
    )


class SimpleConvNetStep:
    params = [list(benchcases.CONVNET_BATCHES), list(benchcases.DTYPES), list(benchcases.IMPLS)]
    param_names = ["batch", "dtype", "impl"]

    def setup(self, batch, dtype, impl):
        self.step = benchcases.convnet_step(impl, batch, dtype)
        self.step()

    def time_step(self, batch, dtype, impl):
        self.step()


class DeepConvNetInference:
    params = [list(benchcases.DEEP_INFERENCE_IMAGES), list(benchcases.IMPLS)]
    param_names = ["images", "impl"]
    number = 1
    repeat = (2, 5, 60.0)

    def setup(self, images, impl):
        self.infer = benchcases.deep_convnet_inference(impl, images)
        if impl == "fastbp":
            self.infer()

    def time_accuracy(self, images, impl):
        self.infer()
