"""Training side of qsenn: dense ResNet + FDL, feature selection, glm-saga path,
ternary quantisation, fine-tuning, metrics."""
