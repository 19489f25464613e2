// The streaming log-mel features of ``models.features.FeatureExtractor.streaming`` in one call:
// torchaudio's MelSpectrogram (centred STFT with reflect padding, Hann window, |X|^2, HTK mel
// filterbank), the piecewise-linear log of the gained power and the global normalisation. The
// values come from the same arithmetic: the FFT (at::_fft_r2c), the filterbank product (at::mm)
// and the log (at::log) are the ATen ops that torch.stft, torchaudio and the extractor call, on
// tensors of the same layout; the rest (padding, framing, windowing, power, gain, clamp,
// normalisation) are loops that round each step once, as the ATen ops do. |X| is the hypot
// ATen computes (correctly rounded: here through double precision), then squared in fp32.
// What goes is about fifteen ATen ops and the Python around them per chunk.
#include "linears.h"

#include <ATen/ATen.h>

#include <cmath>
#include <vector>

torch::Tensor log_mel(const torch::Tensor& wave, const torch::Tensor& window, const torch::Tensor& fb,
                      double gain, const torch::Tensor& mean, const torch::Tensor& invstd, int64_t hop) {
  const int64_t n_fft = window.numel(), bins = n_fft / 2 + 1, mels = fb.size(1);
  TORCH_CHECK(wave.dim() == 2 && wave.scalar_type() == torch::kFloat && window.scalar_type() == torch::kFloat &&
                  fb.dim() == 2 && fb.size(0) == bins && fb.scalar_type() == torch::kFloat &&
                  mean.numel() == mels && invstd.numel() == mels && hop > 0,
              "log_mel: wave (N, S) fp32, window (n_fft,), filterbank (n_fft / 2 + 1, F), mean and invstd (F,)");
  const int64_t n = wave.size(0), s = wave.size(1), pad = n_fft / 2;
  TORCH_CHECK(s > pad, "log_mel: a window of ", s, " samples is too short to reflect-pad by ", pad);
  const int64_t frames = 1 + s / hop;  // 1 + (s + 2 pad - n_fft) / hop
  auto x = wave.contiguous();
  auto w = window.contiguous();
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  // reflect-padded samples, then frames * window (N, T, n_fft), as stft's input.mul(window)
  auto framed = torch::empty({n, frames, n_fft}, x.options());
  float* fp = framed.data_ptr<float>();
  std::vector<float> padded(s + 2 * pad);
  for (int64_t b = 0; b < n; ++b) {
    const float* row = xp + b * s;
    for (int64_t i = 0; i < s + 2 * pad; ++i) {
      int64_t j = i - pad;
      if (j < 0) j = -j;
      if (j >= s) j = 2 * (s - 1) - j;
      padded[i] = row[j];
    }
    for (int64_t t = 0; t < frames; ++t) {
      float* out = fp + (b * frames + t) * n_fft;
      const float* in = padded.data() + t * hop;
      for (int64_t i = 0; i < n_fft; ++i) out[i] = in[i] * wp[i];
    }
  }
  auto spec = at::_fft_r2c(framed, {2}, 0, true);  // (N, T, bins) complex, unnormalised
  auto power = torch::empty({n * frames, bins}, x.options());
  const auto* cp = reinterpret_cast<const float*>(spec.data_ptr());  // interleaved re, im
  float* pp = power.data_ptr<float>();
  for (int64_t i = 0; i < n * frames * bins; ++i) {
    const double re = cp[2 * i], im = cp[2 * i + 1];
    const float mag = static_cast<float>(std::sqrt(re * re + im * im));
    pp[i] = mag * mag;
  }
  auto mel = at::mm(power, fb.contiguous());  // (N T, F), as torchaudio's matmul folds it
  // piecewise-linear log of mel * gain: log(max(x, e)) above e, x / e below
  const float g = static_cast<float>(gain), e = static_cast<float>(M_E);
  float* mp = mel.data_ptr<float>();
  const int64_t count = mel.numel();
  std::vector<float> gained(count);
  for (int64_t i = 0; i < count; ++i) {
    const float v = mp[i] * g;
    gained[i] = v;
    mp[i] = v > e || v != v ? v : e;  // clamp(min=e); NaN stays NaN as in clamp
  }
  at::log_(mel);
  const auto mc = mean.contiguous(), sc = invstd.contiguous();
  const float* mu = mc.data_ptr<float>();
  const float* is = sc.data_ptr<float>();
  for (int64_t i = 0; i < count; ++i) {
    const float v = gained[i] > e ? mp[i] : gained[i] / e;
    const int64_t f = i % mels;
    mp[i] = (v - mu[f]) * is[f];
  }
  return mel.view({n, frames, mels});
}
