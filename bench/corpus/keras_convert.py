"""Write a Keras application (random weights) as ONNX with tf2onnx.

Imports TensorFlow and nothing of the project, so that it also runs as a script in a
virtualenv of its own (`python -P keras_convert.py NAME SIZE OUT`), where TensorFlow's
pins of protobuf and numpy cannot clash with the engine's."""

import os
import sys


def convert(name: str, size: int, path: str) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import tf2onnx

    model = getattr(tf.keras.applications, name)(weights=None, input_shape=(size, size, 3))

    # Through a tf.function: tf2onnx's from_keras does not take Keras 3 models.
    @tf.function(input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32, "input")])
    def serve(x: tf.Tensor) -> tf.Tensor:
        return model(x, training=False)

    tf2onnx.convert.from_function(
        serve, input_signature=serve.input_signature, opset=17, output_path=path
    )


if __name__ == "__main__":
    convert(sys.argv[1], int(sys.argv[2]), sys.argv[3])
