using System.CommandLine;
using System.Globalization;
using Cria.Formats;
using Cria.Models;

namespace Cria.Cli;

/// <summary><c>cria info MODEL</c>: metadata, the hyper-parameters Cria reads, and the tensor table.</summary>
static class InfoCommand
{
    public static Command Create()
    {
        var model = new Argument<string>("model") { Description = "GGUF model file" };
        var cmd = new Command("info", "print a GGUF file's metadata and tensor table") { model };
        cmd.SetAction(r =>
        {
            var path = r.GetValue(model)!;
            using var f = GgufFile.Open(path);
            var o = Console.Out;
            o.WriteLine($"file: {path} ({f.FileSize:N0} bytes), GGUF v{f.Version}, alignment {f.Alignment}, {f.Metadata.Count} metadata keys, {f.Tensors.Count} tensors");
            o.WriteLine();
            o.WriteLine("metadata:");
            foreach (var k in f.MetadataKeys) o.WriteLine($"  {k,-45} {Show(f.Metadata[k])}");
            o.WriteLine();
            try
            {
                var c = ModelConfig.FromGguf(f);
                o.WriteLine($"model: {c.Architecture}, {c.LayerCount} layers, dim {c.Dim}, heads {c.HeadCount} (kv {c.KvHeadCount}, head dim {c.HeadDim}), ffn {c.FfnDim}{(c.IsMoe ? $" per expert, {c.ExpertUsedCount} of {c.ExpertCount} experts per token" : "")}, vocab {c.VocabSize}, ctx {c.ContextLength}");
                o.WriteLine($"       rope base {c.RopeFreqBase}, rope dims {c.RopeDim}, scaling {c.RopeScaling} (freq scale {c.RopeFreqScale}){(c.RopeFreqFactors != null ? ", rope_freqs present" : "")}, rms eps {c.RmsNormEps}");
            }
            catch (ModelFormatException e) { o.WriteLine("model: not runnable by Cria: " + e.Message); }
            o.WriteLine();
            o.WriteLine($"  {"#",4}  {"name",-32} {"shape",-22} {"type",-6} {"bytes",14}  offset");
            long params_ = 0;
            for (int i = 0; i < f.Tensors.Count; i++)
            {
                var t = f.Tensors[i];
                params_ += t.ElementCount;
                o.WriteLine($"  {i,4}  {t.Name,-32} {"[" + string.Join(", ", t.Shape) + "]",-22} {t.Type,-6} {t.ByteSize,14:N0}  {f.DataOffset + t.Offset}");
            }
            o.WriteLine();
            o.WriteLine($"parameters: {params_:N0}");
            return 0;
        });
        return cmd;
    }

    static string Show(object v)
    {
        if (v is string s) return s.Length > 80 ? Quote(s[..77]) + "…" : Quote(s);
        if (v is Array a)
        {
            var items = new List<string>();
            for (int i = 0; i < Math.Min(a.Length, 6); i++) items.Add(a.GetValue(i) is string e ? Quote(e) : Convert.ToString(a.GetValue(i), CultureInfo.InvariantCulture)!);
            return $"[{string.Join(", ", items)}{(a.Length > 6 ? ", …" : "")}] ({a.Length} × {a.GetType().GetElementType()!.Name})";
        }
        return Convert.ToString(v, CultureInfo.InvariantCulture) + $" ({v.GetType().Name})";
    }

    static string Quote(string s) => "\"" + s.Replace("\n", "\\n") + "\"";
}
