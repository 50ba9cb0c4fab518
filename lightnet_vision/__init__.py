"""LightNet vision models trained with PyTorch Lightning."""
