"""Convolution kernels. Each module has forward, input_grad and weight_grad side by side."""
