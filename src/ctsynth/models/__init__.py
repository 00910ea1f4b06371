"""The networks: a 3D KL autoencoder (stage 1) and a class-conditional latent diffusion UNet (stage 2), from MONAI."""
