"""asv: the book's ch05/train_neuralnet.py loop on the embedded MNIST, per variant.

Variants (``benchcases.USER_LOOP_VARIANTS``): the book's classes, the book's TwoLayerNet
over ``fastbp.layers``, ``fastbp.nets.TwoLayerNet``. ``time_iteration`` is one iteration
as the book writes it (``np.random.choice`` batch of 100, fancy-indexed copy, gradient,
update, loss); ``time_gradient`` the gradient on fresh batches; ``time_accuracy`` the
once-per-epoch accuracy on all training and test images. ``fastbp bench --section
userloop`` times the same phases, each variant in fresh processes of its own.
"""

from fastbp import benchcases


class UserLoop:
    params = [list(benchcases.USER_LOOP_VARIANTS)]
    param_names = ["variant"]
    repeat = (5, 20, 10.0)
    min_run_count = 5

    def setup(self, variant):
        network = benchcases.user_loop_net(variant)
        self.phases, self.accuracy = benchcases.user_loop(network)
        self.gradient = benchcases.gradient_on_fresh_batches(network.gradient)
        self.time_iteration(variant)
        self.accuracy()

    def time_iteration(self, variant):
        for phase in self.phases.values():
            phase()

    def time_gradient(self, variant):
        self.gradient()

    def time_accuracy(self, variant):
        self.accuracy()
