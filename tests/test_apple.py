"""The book's shopping examples (ch.5 buy_apple.py, buy_apple_orange.py) with MulLayer/AddLayer.

Run on fastbp's layers and, as a check of the expected numbers themselves, on the book's.
"""

import pytest

from fastbp import layers as fast
from fastbp import reference as book


def approx(expected):
    """The book's printed values; the float arithmetic is off by a few ulps at most."""
    return pytest.approx(expected, rel=1e-12)


@pytest.fixture(params=[fast, book], ids=["fastbp", "book"])
def layers(request):
    return request.param


def test_buy_apple(layers):
    apple, apple_num, tax = 100, 2, 1.1
    mul_apple_layer, mul_tax_layer = layers.MulLayer(), layers.MulLayer()

    apple_price = mul_apple_layer.forward(apple, apple_num)
    price = mul_tax_layer.forward(apple_price, tax)
    assert price == approx(220)

    dapple_price, dtax = mul_tax_layer.backward(1)
    dapple, dapple_num = mul_apple_layer.backward(dapple_price)
    assert (dapple, dapple_num, dtax) == approx((2.2, 110, 200))


def test_buy_apple_orange(layers):
    apple, apple_num, orange, orange_num, tax = 100, 2, 150, 3, 1.1
    mul_apple_layer, mul_orange_layer = layers.MulLayer(), layers.MulLayer()
    add_apple_orange_layer, mul_tax_layer = layers.AddLayer(), layers.MulLayer()

    apple_price = mul_apple_layer.forward(apple, apple_num)
    orange_price = mul_orange_layer.forward(orange, orange_num)
    all_price = add_apple_orange_layer.forward(apple_price, orange_price)
    price = mul_tax_layer.forward(all_price, tax)
    assert price == approx(715)

    dall_price, dtax = mul_tax_layer.backward(1)
    dapple_price, dorange_price = add_apple_orange_layer.backward(dall_price)
    dorange, dorange_num = mul_orange_layer.backward(dorange_price)
    dapple, dapple_num = mul_apple_layer.backward(dapple_price)
    assert (dapple_num, dapple, dorange, dorange_num, dtax) == approx((110, 2.2, 3.3, 165, 650))
