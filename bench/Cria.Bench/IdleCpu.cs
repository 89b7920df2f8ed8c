using System.Diagnostics;
using Cria.Cli;

namespace Cria.Bench;

/// <summary>
/// `Cria.Bench idle-cpu MODEL`: loads the model with 2 threads, runs one short decode, then reports the process's CPU
/// time over three idle 5-second spans — what an idle Cria (a server between requests, or the side-by-side runner
/// during llama.cpp's turn) takes from the machine.
/// </summary>
static class IdleCpu
{
    public static int Run(string[] args)
    {
        var cria = new CriaBenchEngine(args[0], 2, 16, 16);
        cria.RunGenerate();
        var p = Process.GetCurrentProcess();
        for (int i = 0; i < 3; i++)
        {
            p.Refresh(); var c0 = p.TotalProcessorTime; long t0 = Stopwatch.GetTimestamp();
            Thread.Sleep(5000);
            p.Refresh(); var c1 = p.TotalProcessorTime;
            Console.WriteLine($"idle 5 s: process CPU {(c1 - c0).TotalMilliseconds:F0} ms ({(c1 - c0).TotalSeconds / Stopwatch.GetElapsedTime(t0).TotalSeconds:P1} of one core)");
        }
        return 0;
    }
}
