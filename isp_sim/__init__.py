"""isp_sim package."""
