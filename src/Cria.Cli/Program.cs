using System.CommandLine;
using Cria.Cli;

var root = new RootCommand("cria — run, inspect and build Llama-family models in pure C#");
root.Subcommands.Add(GenerateCommand.Create());
root.Subcommands.Add(InfoCommand.Create());
root.Subcommands.Add(MakeModelCommand.Create());
root.Subcommands.Add(ServeCommand.Create());
root.Subcommands.Add(BenchCommand.Create());
root.Subcommands.Add(TrainCommand.Create());
root.Subcommands.Add(PerplexityCommand.Create());
root.Subcommands.Add(BenchTrainCommand.Create());
root.Subcommands.Add(PasskeyCommand.Create());
root.Subcommands.Add(QuantizeCommand.Create());
root.Subcommands.Add(ImatrixCommand.Create());
root.Subcommands.Add(ConvertCommand.Create());
root.Subcommands.Add(ExportLoraCommand.Create());
root.Subcommands.Add(ExtrapolateCommand.Create());
root.Subcommands.Add(ConvertLoraCommand.Create());
root.Subcommands.Add(NeuronsCommand.Create());
root.Subcommands.Add(LoramCommands.Prune());
root.Subcommands.Add(LoramCommands.Recover());
root.Subcommands.Add(GuardCommand.Create());
root.Subcommands.Add(ClassifyCommand.Train());
root.Subcommands.Add(ClassifyCommand.Classify());
root.Subcommands.Add(RewardCommand.Train());
root.Subcommands.Add(RewardCommand.Score());
root.Subcommands.Add(RewardCommand.BestOf());
root.Subcommands.Add(SelfEvalCommand.Train());
root.Subcommands.Add(RefuelCommand.Create());
root.Subcommands.Add(FilterCommand.Create());
root.Subcommands.Add(MagpieCommand.Create());
root.Subcommands.Add(SwiftKvCommand.Create());
root.Subcommands.Add(BeaconCommand.Create());
root.Subcommands.Add(LocretCommand.Create());
try
{
    return root.Parse(args).Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
}
catch (Cria.CriaException e)
{
    Console.Error.WriteLine("error: " + e.Message);
    return 1;
}
